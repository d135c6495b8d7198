"""The configuration schema: every key a user can set, its type and the values it allows.

Inputs: `params.yaml` (what `dvc repro` runs with) or `conf/` composed by Hydra with overrides.
Outputs: a validated, frozen `Config` (pydantic), or a `ConfigError` naming the key, the value
and what is allowed, raised before any stage does work.

Command: `uv run python -m pipeline.config` regenerates `params.yaml` from `conf/`;
`--check` only reports whether it has drifted.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from pipeline.core.errors import ConfigError, command_parser, run_cli
from pipeline.core.paths import CONF_DIR, PARAMS_FILE, project_root


@dataclass(frozen=True)
class Says:
    """How a key is described in errors: its type, and the values it allows."""

    kind: str
    allowed: str = ""


def _check(ok: Any) -> AfterValidator:
    def validate(value: Any) -> Any:
        if not ok(value):
            raise ValueError("not allowed")
        return value

    return AfterValidator(validate)


PositiveInt = Annotated[int, Field(gt=0), Says("an integer", "an integer > 0")]
# A number stays as written (30, not 30.0): a run's config.yaml is then params.yaml to the letter.
Number = int | float
PositiveFloat = Annotated[Number, Field(gt=0), Says("a number", "a number > 0")]
NonEmpty = Annotated[str, Field(min_length=1), Says("a string", "a non-empty value")]

MNIST_FILES = ("train_images", "train_labels", "test_images", "test_labels")


def _choice(*options: str) -> Any:
    return Annotated[Literal[options], Says("a string", "one of " + ", ".join(map(repr, options)))]


class Section(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class FileSpec(Section):
    name: NonEmpty
    bytes: PositiveInt
    sha256: Annotated[
        str, Field(pattern="^[0-9a-f]{64}$"), Says("a string", "64 lowercase hex digits")
    ]


def _class_names(value: list[str] | None) -> bool:
    if value is None:
        return True  # a folder dataset's subfolders name its classes
    return len(value) >= 2 and len(set(value)) == len(value) and all(v.strip() for v in value)


Fraction = Annotated[
    Number, Field(gt=0, lt=1), Says("a number", "a number strictly between 0 and 1")
]
# A folder dataset's fetch writes only its manifest to data/raw/ (each picture's digest, size
# and mode); preprocess reads the pictures from the folder, checked against it.
FOLDER_FILES = {"source": "folder.json"}


def _colour(value: str | None) -> bool:
    """A colour Pillow names: "white", "black", "#808080", "rgb(0,128,255)"."""
    from PIL import ImageColor

    try:
        return value is None or len(ImageColor.getrgb(value)) >= 3
    except ValueError:
        return False


class DataConfig(Section):
    # Every dataset file (conf/data/) has all these keys; those of the other format are null.
    format: _choice("idx", "folder")
    name: Annotated[
        str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$"), Says("a string", "a lowercase name")
    ]
    description: NonEmpty
    # What the fetch stage reads, which DVC watches (dvc.yaml): an IDX dataset's config file,
    # a folder dataset's folder (`${data.path}`).
    source: Annotated[str | None, Says("a string or null")]
    classes: Annotated[
        list[str] | None,
        _check(_class_names),
        Says(
            "a list of a string or null",
            "a list of at least 2 distinct, non-empty class names (null: a folder's subfolders)",
        ),
    ]
    image_size: Annotated[
        list[PositiveInt],
        Field(min_length=2, max_length=2),
        Says("a list of an integer", "[height, width] in pixels, each > 0"),
    ]
    # rgb or grayscale; null (a folder): rgb when any of its pictures has colour.
    color: Annotated[
        Literal["rgb", "grayscale"] | None,
        Says("a string or null", "'rgb', 'grayscale' or null (a folder decides)"),
    ]
    handwriting: Annotated[bool, Says("true or false")]
    registered_model: NonEmpty
    # Records per file of data/processed/ (about this many megabytes each).
    shard_mb: PositiveInt
    # format idx: files downloaded from mirrors, the test set its own files.
    mirror_env: Annotated[str | None, Says("a string or null")]
    mirrors: Annotated[
        list[str] | None,
        _check(lambda v: v is None or all(m.startswith("https://") for m in v)),
        Says("a list of a string or null", "a list of https:// URLs (may be empty)"),
    ]
    files: Annotated[
        dict[str, FileSpec] | None,
        _check(lambda v: v is None or sorted(v) == sorted(MNIST_FILES)),
        Says("a mapping or null", "a mapping with exactly the keys " + ", ".join(MNIST_FILES)),
    ]
    timeout_s: Annotated[Number | None, Field(gt=0), Says("a number or null", "a number > 0")]
    min_speed_kb_s: Annotated[
        Number | None,
        Field(ge=0),
        Says("a number or null", "a number of kB/s, 0 or more (0: no minimum)"),
    ]
    # format folder: a folder of class subfolders; `test_fraction` of each class is the test set.
    path: Annotated[
        str | None,
        Says("a string or null", "an absolute path to a folder of class subfolders"),
    ]
    test_fraction: Annotated[
        Number | None,
        Field(gt=0, lt=1),
        Says("a number or null", "a number strictly between 0 and 1"),
    ]
    # How a picture of another shape becomes `image_size`: stretched (aspect not kept, Keras's
    # default), cropped to its aspect ratio first, or padded to it with `background`.
    resize: Annotated[
        Literal["stretch", "crop", "pad"] | None,
        Says("a string or null", "one of 'stretch', 'crop', 'pad'"),
    ]
    # What transparent parts (and padding) become: a colour name or #rrggbb.
    background: Annotated[
        str | None,
        _check(_colour),
        Says("a string or null", "a colour: a name (white) or #rrggbb"),
    ]
    # A file that is not a picture, or is cut short: stop naming it, or leave it out and list it.
    on_bad_picture: Annotated[
        Literal["error", "skip"] | None, Says("a string or null", "one of 'error', 'skip'")
    ]
    val_fraction: Fraction

    @functools.cached_property
    def class_names(self) -> list[str]:
        """The class names in label order: `classes`, or a folder dataset's subfolders (listed
        once: a process keeps the classes it started with)."""
        if self.classes is not None:
            return list(self.classes)
        return class_folders(Path(self.path or "."))

    @property
    def raw_files(self) -> dict[str, str]:
        """The files the fetch stage puts in data/raw/: key -> file name."""
        if self.format == "folder":
            return dict(FOLDER_FILES)
        return {key: spec.name for key, spec in (self.files or {}).items()}


def class_folders(path: Path) -> list[str]:
    """A folder dataset's classes: its subfolders' names, sorted (hidden ones left out), as
    Keras's `image_dataset_from_directory` and torchvision's `ImageFolder` read them."""
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


class MLPConfig(Section):
    name: Literal["mlp"]
    hidden_units: PositiveInt


class CNNConfig(Section):
    name: Literal["cnn"]
    filters: Annotated[
        list[PositiveInt],
        Field(min_length=1),
        Says("a list of an integer", "a non-empty list of an integer > 0"),
    ]
    kernel_size: Annotated[Literal[1, 3, 5, 7], Says("an integer", "an odd integer from 1 to 7")]
    hidden_units: PositiveInt
    dropout: Annotated[Number, Field(ge=0, lt=1), Says("a number", "a number in [0, 1)")]


MODELS: dict[str, type[Section]] = {"mlp": MLPConfig, "cnn": CNNConfig}
ModelConfig = Annotated[
    MLPConfig | CNNConfig,
    Field(discriminator="name"),
    Says("a mapping", "one of " + ", ".join(map(repr, MODELS)) + " (model=NAME)"),
]


class TrainConfig(Section):
    epochs: PositiveInt
    batch_size: PositiveInt
    optimizer: _choice("adam", "sgd", "rmsprop")
    learning_rate: PositiveFloat
    loss: _choice("sparse_categorical_crossentropy")
    metrics: Annotated[
        list[Literal["accuracy"]],
        Field(min_length=1),
        Says("a list of a string", "a non-empty list of one of 'accuracy'"),
    ]
    max_examples: Annotated[
        Annotated[int, Field(gt=0)] | None, Says("an integer or null", "an integer > 0")
    ]
    # A training split whose pixels as float32 take at most this many megabytes is loaded whole
    # (fastest); a larger one streams from its shards (0: always stream).
    in_memory_mb: Annotated[int, Field(ge=0), Says("an integer", "an integer >= 0")]
    # Megabytes of pictures a streamed split is shuffled through (the rest waits on disk).
    shuffle_buffer_mb: PositiveInt
    intra_op_threads: PositiveInt
    inter_op_threads: PositiveInt
    jit_compile: Annotated[bool, Says("true or false")]


def _server_url(value: str | None) -> bool:
    if value is None:
        return True
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname) and "@" not in parts.netloc


class TrackingConfig(Section):
    experiment_name: NonEmpty
    registered_model: NonEmpty
    uri: Annotated[
        str | None,
        _check(_server_url),
        Says(
            "a string or null",
            "null (the local store) or an http(s):// server URL without credentials (set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD in the environment instead)",
        ),
    ]
    server_wait_s: Annotated[
        Number, Field(ge=0, le=1800), Says("a number", "a number of seconds from 0 to 1800")
    ]


class SweepConfig(Section):
    seeds: PositiveInt
    share_epochs: Annotated[bool, Says("true or false")]
    # Set by the sweep (pipeline/sweeps/plan.py), never by hand: the epoch counts below
    # train.epochs this job's training also makes a model of, each its own run.
    also_epochs: Annotated[
        list[PositiveInt] | None,
        Says("a list of an integer or null", "a list of epoch counts below train.epochs"),
    ]


class RegistryConfig(Section):
    promote: _choice("significant", "best", "never")
    alpha: Annotated[
        Number, Field(gt=0, lt=1), Says("a number", "a number strictly between 0 and 1")
    ]


class Config(Section):
    # In params.yaml's order (conf/config.yaml's defaults, then its own keys): a run records
    # `to_yaml(config.to_dict())`, which is then params.yaml to the letter.
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    tracking: TrackingConfig
    seed: Annotated[int, Field(ge=0), Says("an integer", "an integer >= 0")]
    sweep: SweepConfig
    registry: RegistryConfig

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`: the resolved config as MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


# ---- errors: one pydantic error -> the message a user can act on --------------------------

TYPE_ERRORS = ("_type", "_parsing", "is_instance_of", "union_tag_not_found")


def _says(annotation: Any, info: Any = None) -> Says | None:
    for meta in [*getattr(info, "metadata", []), *getattr(annotation, "__metadata__", ())]:
        if isinstance(meta, Says):
            return meta
    return None


def _explain(error: dict[str, Any], data: Any) -> str:
    """Walk the error's location through the schema and the input alongside it."""
    cls: Any = Config
    value, keys, says = data, [], None
    loc = list(error["loc"])
    while loc:
        part = loc.pop(0)
        if isinstance(cls, type) and issubclass(cls, BaseModel) and part in cls.model_fields:
            info = cls.model_fields[part]
            keys.append(str(part))
            value = value.get(part) if isinstance(value, dict) else None
            says, cls = _says(info.annotation, info), info.annotation
            if isinstance(says, Says) and loc and isinstance(loc[0], int):
                break  # a list is judged whole: "received [8, -2]"
            if cls in (MLPConfig | CNNConfig,) and loc:  # the union's tag: "cnn"
                cls = MODELS[loc.pop(0)]
        elif isinstance(cls, type) and issubclass(cls, BaseModel):  # unknown key
            where = ".".join(keys) or "the config"
            return (
                f"unknown config key {'.'.join([*keys, str(part)])} (value {error['input']!r}); "
                f"{where} allows only: {', '.join(cls.model_fields)}."
            )
        elif isinstance(part, str) and isinstance(value, dict):  # a dict's own key
            keys[-1] = f"{keys[-1]}.{part}"
            value, cls, says = value.get(part), FileSpec, None
        else:
            break
    key = ".".join(keys) or "the config"
    kind = error["type"]
    if kind == "missing":
        return f"missing config key {key}; add it to conf/ or params.yaml."
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        key, value = f"{key}.name", value.get("name") if isinstance(value, dict) else None
        allowed = _says(ModelConfig).allowed
    elif kind in ("model_type", "dict_type", "model_attributes_type"):
        allowed = "a mapping"
    elif kind.endswith(TYPE_ERRORS):
        allowed = says.kind if says else "a mapping"
    else:
        allowed = says.allowed if says else error["msg"]
    return (
        f"{key} must be {allowed}, received {value!r}. "
        f"Fix it in conf/ (then `uv run python -m pipeline.config`) or in your override "
        f"(e.g. `dvc exp run -S {key}=...`)."
    )


def validate(data: dict[str, Any]) -> Config:
    """Turn a plain mapping (a composed config) into a `Config`, or raise `ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(f"the config must be a mapping, received {data!r}.")
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # Unknown and missing keys first: a value is only judged once its key is right.
        first = min(errors, key=lambda e: e["type"] not in ("extra_forbidden", "missing"))
        raise ConfigError(_explain(first, data)) from None
    check_dataset(cfg.data)
    also = cfg.sweep.also_epochs or []
    if any(k >= cfg.train.epochs for k in also) or len(set(also)) != len(also):
        raise ConfigError(
            f"sweep.also_epochs must be distinct epoch counts below train.epochs "
            f"({cfg.train.epochs}), received {also}; the sweep sets it (pipeline/sweeps/plan.py)."
        )
    return cfg


# Keys that make an epoch depend on the total epoch count (a learning-rate schedule, early
# stopping): a sweep over train.epochs that sets one trains each epoch count alone.
EPOCH_DEPENDENT: tuple[str, ...] = ()


# What each format needs, which the other leaves null.
NEEDS = {
    "idx": ("source", "classes", "mirrors", "files", "timeout_s", "min_speed_kb_s"),
    "folder": ("path", "test_fraction", "resize", "background", "on_bad_picture"),
}
HOW = "Fix it in conf/data/ or in your override (e.g. `dvc exp run -S data.path=/abs/path`)."


def check_dataset(data: DataConfig) -> None:
    """The keys the dataset's format needs are set, and a folder dataset's folder has at least
    two class subfolders (the pictures in them are checked when the fetch stage reads them)."""
    for key in NEEDS[data.format]:
        if getattr(data, key) in (None, "???"):  # "???": Hydra's mandatory value, not given
            raise ConfigError(
                f"data.{key} must be set for a dataset of format {data.format!r}, "
                f"received {getattr(data, key)!r}. {HOW}"
            )
    if data.format == "idx":
        if data.color == "rgb":
            raise ConfigError(
                f"data.color must be 'grayscale' for a dataset of format 'idx' (its files hold "
                f"one channel), received 'rgb'. {HOW}"
            )
        return
    path = Path(data.path)
    if not path.is_absolute():
        raise ConfigError(
            f"data.path must be an absolute path, received {data.path!r} (DVC runs experiments "
            f"in copies of the project, where a relative path means something else). {HOW}"
        )
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise ConfigError(
            f"data.path {data.path} {what}; it must be a folder with one subfolder of pictures "
            f"per class (cats/, dogs/, ...). {HOW}"
        )
    found = class_folders(path)
    if len(found) < 2:
        has = f"only the class subfolder {found[0]!r}" if found else "no class subfolders"
        raise ConfigError(
            f"data.path {data.path} has {has}; a classifier needs at least 2 (one subfolder of "
            "pictures per class: cats/, dogs/, ...). Add them and run again."
        )
    if data.classes is not None and sorted(data.classes) != found:
        raise ConfigError(
            f"data.classes {data.classes} are not the subfolders of {data.path} ({found}); list "
            "exactly those (in the label order you want) or set data.classes to null."
        )


def load_params(path: Path | None = None) -> Config:
    """Read and validate `params.yaml`, the configuration every DVC stage runs with."""
    path = Path(path) if path else project_root() / PARAMS_FILE
    if not path.is_file():
        raise ConfigError(
            f"{path} not found (cwd {Path.cwd()}); run stages from the project root, "
            "or regenerate it with `uv run python -m pipeline.config`."
        )
    with path.open(encoding="utf-8") as fh:
        return validate(yaml.safe_load(fh))


def compose(overrides: list[str] | None = None) -> dict[str, Any]:
    """Compose `conf/` with Hydra, the way DVC does for `dvc exp run -S`, into plain data."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        if GlobalHydra.instance().is_initialized():  # inside a Hydra app (a sweep job): conf/
            cfg = hydra_compose(config_name="config", overrides=overrides or [])
        else:
            with initialize_config_dir(str(CONF_DIR), version_base=None):
                cfg = hydra_compose(config_name="config", overrides=overrides or [])
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"cannot compose conf/ with overrides {overrides}: {exc}") from exc
    return OmegaConf.to_container(cfg, resolve=True)


def params_yaml_text(overrides: list[str] | None = None) -> str:
    """`conf/` composed and dumped exactly as DVC's Hydra composition writes `params.yaml`."""
    data = compose(overrides)
    validate(data)
    return to_yaml(data)


def to_yaml(data: dict[str, Any]) -> str:
    """A resolved config as YAML, in the layout of `params.yaml`."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(data))


def main(argv: list[str] | None = None) -> None:
    parser = command_parser("config", __doc__)
    parser.add_argument("--check", action="store_true", help="fail if params.yaml has drifted")
    args = parser.parse_args(argv)
    target = CONF_DIR.parent / PARAMS_FILE
    text = params_yaml_text()
    current = target.read_text(encoding="utf-8") if target.exists() else None
    if args.check:
        if current != text:
            raise ConfigError(
                f"{target} differs from conf/ composed; run `uv run python -m pipeline.config`."
            )
        print(f"{target} matches conf/")
        return
    target.write_text(text, encoding="utf-8")
    print(f"wrote {target}")


def cli() -> None:
    run_cli(main, sys.argv[1:])


if __name__ == "__main__":
    cli()
