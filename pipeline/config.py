"""The configuration schema: every key a user can set, its type and the values it allows.

Inputs: `params.yaml` (what `dvc repro` runs with) or `conf/` composed by Hydra with overrides.
Outputs: a validated, frozen `Config`, or a `ConfigError` naming the key, the value and what is
allowed, raised before any stage does work.

Command: `uv run python -m pipeline.config` regenerates `params.yaml` from `conf/`;
`--check` only reports whether it has drifted.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError, run_cli

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"
PARAMS_FILE = "params.yaml"


def _rule(allowed: str, ok: typing.Callable[[Any], bool]) -> dict[str, Any]:
    return {"allowed": allowed, "ok": ok}


POSITIVE = _rule("an integer > 0", lambda v: v > 0)
POSITIVE_FLOAT = _rule("a number > 0", lambda v: v > 0)
FRACTION = _rule("a number strictly between 0 and 1", lambda v: 0 < v < 1)
HALF_OPEN_FRACTION = _rule("a number in [0, 1)", lambda v: 0 <= v < 1)
NON_NEGATIVE = _rule("an integer >= 0", lambda v: v >= 0)
NOT_EMPTY = _rule("a non-empty value", lambda v: len(v) > 0)
SHA256 = _rule(
    "64 lowercase hex digits",
    lambda v: len(v) == 64 and all(c in "0123456789abcdef" for c in v),
)


def _choice(*options: str) -> dict[str, Any]:
    return _rule("one of " + ", ".join(repr(o) for o in options), lambda v: v in options)


def _each(rule: dict[str, Any]) -> dict[str, Any]:
    return _rule(f"a non-empty list of {rule['allowed']}", lambda v: v and all(map(rule["ok"], v)))


@dataclass(frozen=True)
class FileSpec:
    name: str = field(metadata=NOT_EMPTY)
    bytes: int = field(metadata=POSITIVE)
    sha256: str = field(metadata=SHA256)


MNIST_FILES = ("train_images", "train_labels", "test_images", "test_labels")


@dataclass(frozen=True)
class DataConfig:
    name: str
    mirrors: list[str] = field(
        metadata=_each(_rule("an https:// URL", lambda v: v.startswith("https://")))
    )
    files: dict[str, FileSpec] = field(
        metadata=_rule(
            "a mapping with exactly the keys " + ", ".join(MNIST_FILES),
            lambda v: sorted(v) == sorted(MNIST_FILES),
        )
    )
    timeout_s: float = field(metadata=POSITIVE_FLOAT)
    val_fraction: float = field(metadata=FRACTION)


@dataclass(frozen=True)
class MLPConfig:
    name: str = field(metadata=_choice("mlp"))
    hidden_units: int = field(metadata=POSITIVE)


@dataclass(frozen=True)
class CNNConfig:
    name: str = field(metadata=_choice("cnn"))
    filters: list[int] = field(metadata=_each(POSITIVE))
    kernel_size: int = field(
        metadata=_rule("an odd integer from 1 to 7", lambda v: v in (1, 3, 5, 7))
    )
    hidden_units: int = field(metadata=POSITIVE)
    dropout: float = field(metadata=HALF_OPEN_FRACTION)


MODELS: dict[str, type] = {"mlp": MLPConfig, "cnn": CNNConfig}
ModelConfig = MLPConfig | CNNConfig


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = field(metadata=POSITIVE)
    batch_size: int = field(metadata=POSITIVE)
    optimizer: str = field(metadata=_choice("adam", "sgd", "rmsprop"))
    learning_rate: float = field(metadata=POSITIVE_FLOAT)
    loss: str = field(metadata=_choice("sparse_categorical_crossentropy"))
    metrics: list[str] = field(metadata=_each(_choice("accuracy")))
    max_examples: int | None = field(metadata=POSITIVE)
    intra_op_threads: int = field(metadata=POSITIVE)
    inter_op_threads: int = field(metadata=POSITIVE)
    jit_compile: bool


def _server_url(value: str) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname) and "@" not in parts.netloc


@dataclass(frozen=True)
class TrackingConfig:
    experiment_name: str = field(metadata=NOT_EMPTY)
    registered_model: str = field(metadata=NOT_EMPTY)
    uri: str | None = field(
        metadata=_rule(
            "null (the local store) or an http(s):// server URL without credentials (set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD in the environment instead)",
            _server_url,
        )
    )


@dataclass(frozen=True)
class Config:
    seed: int = field(metadata=NON_NEGATIVE)
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    tracking: TrackingConfig

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return {**names, type(None): "null"}[tp]


def _fail(key: str, value: Any, allowed: str) -> typing.NoReturn:
    raise ConfigError(
        f"{key} must be {allowed}, received {value!r}. "
        f"Fix it in conf/ (then `uv run python -m pipeline.config`) or in your override "
        f"(e.g. `dvc exp run -S {key}=...`)."
    )


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Check `value` against the type hint `tp` and return it as plain Python data."""
    if tp == ModelConfig:
        name = value.get("name") if isinstance(value, dict) else None
        if name not in MODELS:
            _fail(f"{key}.name", name, "one of " + ", ".join(map(repr, MODELS)) + " (model=NAME)")
        return _build(MODELS[name], value, key)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _convert(option, value, key)
            except ConfigError:
                continue
        _fail(key, value, _type_name(tp))
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is list:
        if not isinstance(value, list | tuple):
            _fail(key, value, _type_name(tp))
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            _fail(key, value, _type_name(tp))
        _, item = typing.get_args(tp)
        return {str(k): _convert(item, v, f"{key}.{k}") for k, v in value.items()}
    if tp is type(None):
        if value is not None:
            _fail(key, value, "null")
        return None
    # bool is an int to Python, never to a user; an int is a fine float.
    ok = {int: (int,), float: (int, float), str: (str,), bool: (bool,)}[tp]
    if (isinstance(value, bool) and tp is not bool) or not isinstance(value, ok):
        _fail(key, value, _type_name(tp))
    return tp(value)


def _build(cls: type, data: Any, prefix: str) -> Any:
    where = prefix or "the config"
    if not isinstance(data, dict):
        _fail(where, data, "a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(
            f"unknown config key {key} (value {data[unknown[0]]!r}); "
            f"{where} allows only: {', '.join(fields)}."
        )
    missing = [name for name in fields if name not in data]
    if missing:
        key = f"{prefix}.{missing[0]}" if prefix else missing[0]
        raise ConfigError(f"missing config key {key}; add it to conf/ or params.yaml.")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        value = _convert(hints[name], data[name], key)
        rule = f.metadata
        if rule and value is not None and not rule["ok"](value):
            _fail(key, data[name], rule["allowed"])
        values[name] = value
    return cls(**values)


def validate(data: dict[str, Any]) -> Config:
    """Turn a plain mapping (a composed config) into a `Config`, or raise `ConfigError`."""
    return _build(Config, data, "")


def load_params(path: Path | str = PARAMS_FILE) -> Config:
    """Read and validate `params.yaml`, the configuration every DVC stage runs with."""
    path = Path(path)
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
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
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
    parser = argparse.ArgumentParser(description="Regenerate params.yaml from conf/.")
    parser.add_argument("--check", action="store_true", help="fail if params.yaml has drifted")
    args = parser.parse_args(argv)
    target = PROJECT_ROOT / PARAMS_FILE
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


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
