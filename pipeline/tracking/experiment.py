"""The experiment core: train and evaluate one configuration into one explicit MLflow run.

Every model goes down one path, whoever asks for it (the train and evaluate stages, each seed of
a sweep job): `model_run` opens its run with its provenance; `train` fits it (with
core/training.py's `Trainer`) and returns what it got, `log_inputs`, `write_reports` and
`log_model` record it; `evaluate_model` scores it on the test split and logs its figures (the
evaluate stage then registers it, tracking/registry.py). Inputs are plain values: a validated
`Config` and a `Destination` (the project, the output folder, the experiment). Below the output
folder it writes the layout of core/paths.py: models/model.keras, reports/history.csv,
reports/train.json, reports/metrics.json, reports/predictions.csv and reports/figures/*.png;
the run gets the same.

`dvc repro` trains and evaluates in two processes (stages train and evaluate), with the project
root as output folder: `train_model` is the train stage's path through the steps above. A sweep
job does both in one process, each model with its own folder, and leaves the recording and
evaluating of a trained model to its background (pipeline/sweeps/).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from pipeline.core import names
from pipeline.core.config import Config, flatten, to_yaml
from pipeline.core.data import prepared, project_data_digests, sha256_file, write_json
from pipeline.core.errors import PipelineError
from pipeline.core.paths import (
    CONF_DIR,
    FIGURES_DIR,
    HISTORY_CSV,
    METRICS_JSON,
    MODEL_PATH,
    PREDICTIONS_CSV,
    TRAIN_JSON,
)
from pipeline.tracking import runs

if TYPE_CHECKING:  # TensorFlow is imported where a model is built or trained, so the evaluate
    import keras  # stage's own process, which only scores predictions, never loads it.

    from pipeline.core import training
    from pipeline.core.resume import Checkpoints, Resumed

Split = tuple[Any, Any]  # (images, labels): arrays, or tensors for training
EXAMPLE_INPUTS = 5  # validation images the logged model's signature is read from


@dataclass(frozen=True)
class Destination:
    """Where one model's run goes: the project it is made from (code, prepared data, store),
    its output folder, its experiment, and what a sweep adds (its parent run, its tags)."""

    root: Path
    out: Path
    experiment_id: str
    parent_run_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    entry_point: str = "pipeline/train.py"  # the command that makes the run: MLflow's Source
    # A job shipped to another machine (pipeline/sweeps/shipping.py): the data's digests and
    # the code's git state as its sweep found them (its copy has neither raw data nor git).
    data_digests: Mapping[str, str] | None = None
    code_state: Mapping[str, str] | None = None

    @property
    def in_sweep(self) -> bool:
        return self.parent_run_id is not None


@dataclass(frozen=True)
class Trained:
    """A trained model and what its training measured."""

    model: keras.Model
    history: dict[str, list[float]]
    described: dict[str, Any]  # seconds, examples, parameters, layers: logged with the model

    @property
    def summary(self) -> dict[str, Any]:
        """reports/train.json: `described` and the last validation accuracy (`dvc exp show`)."""
        return {**self.described, names.VAL_ACCURACY: self.history[names.VAL_ACCURACY][-1]}


def draw_here(fn: Callable[..., Any], *args: Any) -> Any:
    """The default `draw`: `fn(*args)`, here."""
    return fn(*args)


# Short labels in run names; other keys go by their last part (`momentum0.9`).
LABELS = {
    "model.hidden_units": "h",
    "train.epochs": "e",
    "train.learning_rate": "lr",
    "train.batch_size": "bs",
    "train.max_examples": "n",
    "train.optimizer": "",
    "model.filters": "f",
    "model.kernel_size": "k",
    "model.dropout": "do",
}
UNNAMED = (
    "data.",
    "tracking.",
    "sweep.",
    "registry.",
    "seed",
    "model.name",
)  # not part of what a model is


@functools.cache
def _defaults(model_name: str) -> dict[str, Any]:
    """conf/'s defaults for a model of `model_name`, as flat keys: the seed, conf/model/<name>.yaml
    and the default train group. Read from the YAML files once per process, without Hydra
    (params.yaml would not do: `dvc exp run -S` rewrites it)."""
    top = yaml.safe_load((CONF_DIR / "config.yaml").read_text(encoding="utf-8"))
    chosen = {
        k: v for entry in top["defaults"] if isinstance(entry, dict) for k, v in entry.items()
    }
    chosen["model"] = model_name
    data = {"seed": top["seed"]}
    for group in ("model", "train"):
        path = CONF_DIR / group / f"{chosen[group]}.yaml"
        data[group] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {**flatten(data), "data": chosen["data"]}


def _label(key: str, value: Any) -> str:
    label = LABELS.get(key, key.rsplit(".", 1)[-1])
    if isinstance(value, bool):
        return label if value else f"no{label}"
    if isinstance(value, list):
        return label + "x".join(map(str, value))
    if isinstance(value, float):
        return f"{label}{value:.3g}"  # a searched learning rate: lr0.00123, not 17 digits
    return f"{label}{value}"


def run_name(cfg: Config, with_seed: bool = False) -> str:
    """A name saying what sets this run apart: `mlp-h128-e5`, then every other key that differs
    from conf/'s defaults (`mlp-h128-e5-lr0.003`), then the seed (`-s43`) when it differs or
    `with_seed` (a sweep's replicates)."""
    defaults = _defaults(cfg.model.name)
    flat = flatten(cfg.to_dict())
    parts = [cfg.model.name, _label("model.hidden_units", cfg.model.hidden_units)]
    if cfg.data.name != defaults.get("data"):  # the default dataset goes unnamed
        parts.insert(0, cfg.data.name)
    parts.append(_label("train.epochs", cfg.train.epochs))
    for key, value in flat.items():
        if key in ("model.hidden_units", "train.epochs") or key.startswith(UNNAMED):
            continue
        if defaults.get(key) != value:
            parts.append(_label(key, value))
    if with_seed or cfg.seed != defaults.get("seed"):
        parts.append(f"s{cfg.seed}")
    return "-".join(parts)


@contextmanager
def model_run(cfg: Config, where: Destination, close: bool = True) -> Iterator[str]:
    """Open the run of one model of `cfg`, its provenance logged before any work; yield its id.

    It records the config as `config.yaml` and its digest, the data's digests and the code's
    git state; a sweep's seeds are named with their seed. An error or an interrupt in the block
    closes it FAILED or KILLED; with `close=False` a block that succeeds leaves it open for the
    caller (a sweep closes it after its background evaluation).
    """
    digests = where.data_digests or project_data_digests(where.root, cfg.data.raw_files)
    with runs.model_run(
        where.root,
        to_yaml(cfg.to_dict()),
        digests,
        where.experiment_id,
        run_name(cfg, with_seed=where.in_sweep),
        tags={
            **where.tags,
            names.DATASET_TAG: cfg.data.name,
            names.DESCRIPTION_TAG: cfg.data.description,
            names.HANDWRITING_TAG: str(cfg.data.handwriting).lower(),
            names.CLASSES_TAG: json.dumps(cfg.data.class_names),
        },
        parent_run_id=where.parent_run_id,
        close=close,
        entry_point=where.entry_point,
        code_state=where.code_state,
    ) as run_id:
        yield run_id


def training_splits(cfg: Config, root: Path) -> tuple[Split, Split]:
    """Fix threads, seeds and determinism (before the first tensor: TensorFlow fixes its thread
    counts once it has started); return the project's prepared train split, limited to
    `train.max_examples`, and its validation split: as tensors, or streamed from their shards
    when larger than `train.in_memory_mb` (core/training.py's `training_data`)."""
    from pipeline.core import training

    train = cfg.train
    training.set_determinism(cfg.seed, train.intra_op_threads, train.inter_op_threads)
    return (
        training.training_data(root, "train", train, train.max_examples),
        training.training_data(root, "val", train),
    )


def epoch_logger(run_id: str, every: float = 0.0) -> keras.callbacks.Callback:
    """A Keras callback logging each epoch's metrics to `run_id` (step = epoch, from 1, timed
    when the epoch ended): as the epoch ends, or with `every` seconds, by a thread of its own
    at most that often (those ended since), so that training does not wait for the store. It
    keeps every row in its `held` list (rows of `runs.log_epochs`); `rest()` stops its thread
    and returns the rows it has not logged."""
    import keras

    class EpochLogger(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.held: list[tuple[int, float, dict[str, float]]] = []
            self._sent = 0
            self._lock = threading.Lock()  # one send at a time
            self._stop = threading.Event()
            self._thread: threading.Thread | None = None

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            self.held.append((epoch + 1, time.time(), dict(logs or {})))
            if not every:
                self._send()
            elif self._thread is None:
                self._thread = threading.Thread(target=self._sending, daemon=True)
                self._thread.start()

        def on_train_end(self, logs: dict[str, float] | None = None) -> None:
            self._stop.set()  # what is left goes with `rest()`

        def _sending(self) -> None:
            while not self._stop.wait(every):
                with contextlib.suppress(Exception):  # not now: the rest is logged later
                    self._send()

        def _send(self) -> None:
            with self._lock:
                rows = self.held[self._sent :]
                if rows:
                    runs.log_epochs(run_id, rows)
                    self._sent += len(rows)

        def rest(self) -> list[tuple[int, float, dict[str, float]]]:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            return self.held[self._sent :]

    return EpochLogger()


def log_inputs(run_id: str, cfg: Config, splits: tuple[Split, Split]) -> None:
    """Log the config's keys and the training and validation splits (as MLflow datasets)."""
    from pipeline.core import training

    runs.log_params(run_id, flatten(cfg.to_dict()))
    shapes = {"train": training.shape_of(splits[0]), "val": training.shape_of(splits[1])}
    runs.log_datasets(run_id, shapes, cfg.data.name)


def train(
    cfg: Config,
    splits: tuple[Split, Split],
    trainer: training.Trainer,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    checkpoints: Checkpoints | None = None,
) -> Trained:
    """Build and fit the configured model on (train, val) `splits` with `trainer` (which may
    hand out its last model, reset, with its compiled steps: core/training.py), resuming from
    and saving to `checkpoints` where given (core/resume.py)."""
    from pipeline.core import training

    examples, *shape = training.shape_of(splits[0])
    net = trainer.new_model(cfg.model, cfg.train, len(cfg.data.class_names), shape)
    history, seconds = trainer.fit(net, *splits, cfg.train, callbacks, checkpoints)
    described = {
        names.TRAIN_SECONDS: round(seconds, 3),
        "train_examples": examples,
        "model_params": int(net.count_params()),
        "model_layers": len(net.layers),
    }
    return Trained(net, history, described)


def write_reports(trained: Trained, out: Path) -> None:
    """reports/history.csv and reports/train.json under `out`."""
    write_history(trained.history, out / HISTORY_CSV)
    write_json(out / TRAIN_JSON, trained.summary)


def log_model(
    net: keras.Model | training.Detached,
    run_id: str,
    out: Path,
    example: np.ndarray,
    described: dict[str, Any],
) -> str:
    """Save `net` (or the detached state of a model that trains again) to `out`/models/
    model.keras, tag the run with its digests, log it with the metrics that describe it
    (`described`, shown on its page) and its signature, read from the first of `example`
    inputs; return its URI."""
    from pipeline.core import model, training

    if isinstance(net, training.Detached):
        net = net.model()
    model_file = out / MODEL_PATH
    model.save_model(net, model_file)
    runs.set_tags(
        run_id,
        {
            names.WEIGHTS_SHA256_TAG: model.weights_sha256(net),
            names.MODEL_SHA256_TAG: sha256_file(model_file),
        },
    )
    uri = runs.log_keras_model(run_id, net, np.asarray(example[:EXAMPLE_INPUTS]))
    runs.log_metrics(run_id, described, model_uri=uri)
    return uri


def train_model(cfg: Config, where: Destination, run_id: str) -> Trained:
    """The train stage's model: train `cfg`'s model on the project's prepared splits into the
    open run `run_id`, logging each epoch as it ends; write its reports and model under
    `where.out` and log the model."""
    from pipeline.core import training

    splits = training_splits(cfg, where.root)
    log_inputs(run_id, cfg, splits)
    checkpoints = stage_checkpoints(cfg, where.root, run_id)
    trained = train(cfg, splits, training.Trainer(), [epoch_logger(run_id)], checkpoints)
    if checkpoints.resumed is not None:
        resumed_into(run_id, checkpoints.resumed, trained.history)
    write_reports(trained, where.out)
    example = training.head(splits[1], EXAMPLE_INPUTS)
    log_model(trained.model, run_id, where.out, example, trained.described)
    checkpoints.clear()
    return trained


def training_key(cfg: Config, root: Path) -> dict[str, str]:
    """What a checkpoint of `cfg`'s training is keyed by: its code, config and data."""
    from pipeline.core.resume import code_digest, config_digest

    data = {split: prepared(root, split).digest for split in ("train", "val")}
    return {
        "code": code_digest(root),
        "config": config_digest(cfg.to_dict()),
        "data": hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest(),
    }


def stage_checkpoints(cfg: Config, root: Path, run_id: str) -> Checkpoints:
    """The train stage's checkpoints (models/resume/), keyed by its code, config and data."""
    from pipeline.core.resume import RESUME_DIR, Checkpoints

    return Checkpoints(root / RESUME_DIR, training_key(cfg, root), run_id)


def resumed_rows(resumed: Resumed, history: dict[str, list[float]]) -> list[tuple]:
    """The epochs a resumed training did before (rows of `runs.log_epochs`), from `history`."""
    now = time.time()
    return [
        (epoch + 1, now, {k: v[epoch] for k, v in history.items()})
        for epoch in range(resumed.epoch)
    ]


def resumed_into(run_id: str, resumed: Resumed, history: dict[str, list[float]]) -> None:
    """Run `run_id` resumed a training: it gets the epochs done before (their metrics, from the
    checkpoint) and tags naming where it resumed; the run that made the checkpoint, if still
    RUNNING (its process was killed), ends KILLED saying where its training went on."""
    import mlflow

    runs.log_epochs(run_id, resumed_rows(resumed, history))
    runs.set_tags(
        run_id, {names.RESUMED_FROM_TAG: resumed.run_id or "", names.RESUMED_AT_TAG: resumed.epoch}
    )
    if resumed.run_id and resumed.run_id != run_id:
        client = mlflow.MlflowClient()
        with contextlib.suppress(Exception):  # a run of another store, or gone
            if client.get_run(resumed.run_id).info.status == "RUNNING":
                client.set_tag(
                    resumed.run_id,
                    names.FAILURE_TAG,
                    f"stopped after epoch {resumed.epoch}; its training resumed in run {run_id}",
                )
                client.set_terminated(resumed.run_id, "KILLED")


def evaluate_model(
    cfg: Config,
    where: Destination,
    run_id: str,
    probs: np.ndarray,
    model_uri: str,
    history: dict[str, list[float]],
    draw: Callable[..., Any] | None = draw_here,
) -> dict[str, Any]:
    """Score the model's class probabilities `probs` for the project's test split; write
    metrics, predictions and figures under `where.out` and log them to `run_id`. The figures
    are drawn by `draw(plots.save_figures, folder, drawings)`: here, or where a sweep draws
    them; with `draw=None` only what they are drawn from is kept and logged (figures/
    figure_data.npz), for `draw_figures` when someone asks. Returns the report
    (`metrics.classification_report`). Registering the model is the caller's: the evaluate
    stage registers each, a sweep only its best configuration's."""
    from pipeline.core import metrics, plots  # matplotlib: only where figures are drawn

    out = where.out
    test = prepared(where.root, "test")
    y = test.labels()
    runs.log_datasets(run_id, {"test": (len(test), *test.shape)}, cfg.data.name)
    y_pred = probs.argmax(axis=1)
    report = metrics.classification_report(y, probs)
    classes = cfg.data.class_names
    cm = metrics.confusion_matrix(y, y_pred, len(classes))
    data = plots.figure_data(test.take, y, probs, cm, history, classes)
    figures_dir = out / FIGURES_DIR
    if draw is None or where.in_sweep:  # a sweep's models all keep it
        plots.save_figure_data(figures_dir / names.FIGURE_DATA_FILE, data)
        runs.log_artifact(run_id, figures_dir / names.FIGURE_DATA_FILE, names.FIGURES_ARTIFACT)
    if draw is None:
        runs.set_tags(run_id, {names.FIGURES_TAG: names.FIGURES_ON_DEMAND})
    else:
        draw(plots.save_figures, figures_dir, plots.model_drawings(data))
        log_figures(run_id, figures_dir)
    write_json(out / METRICS_JSON, report)
    write_predictions(y, y_pred, out / PREDICTIONS_CSV)
    scores = {k: report[k] for k in (names.TEST_ACCURACY, names.TEST_LOSS, names.MACRO_F1)}
    scores |= {names.F1_CLASS.format(c): v["f1"] for c, v in report["per_class"].items()}
    runs.log_metrics(run_id, scores, model_uri=model_uri)
    runs.log_artifact(run_id, out / METRICS_JSON)
    return report


def log_figures(run_id: str, folder: Path) -> None:
    """Log the model's figures in `folder` to its run: as files under figures/ and as MLflow
    images (one key per figure, so the UI shows a figure across runs)."""
    from pipeline.core import plots

    for name in plots.MODEL_FIGURES:
        runs.log_artifact(run_id, folder / name, names.FIGURES_ARTIFACT)
    runs.log_images(run_id, folder)
    runs.set_tags(run_id, {names.FIGURES_TAG: names.FIGURES_DRAWN})


def draw_figures(run_id: str, folder: Path, draw: Callable[..., Any] = draw_here) -> None:
    """Draw the figures of a model whose evaluation kept only their data (`folder`/
    figure_data.npz, checked before use) and log them to its run, open or ended."""
    from pipeline.core import plots

    data = plots.load_figure_data(folder / names.FIGURE_DATA_FILE)
    draw(plots.save_figures, folder, plots.model_drawings(data))
    log_figures(run_id, folder)


def draw_run_figures(run_id: str, folder: Path, client: Any = None) -> Path:
    """Draw the figures of a run whose model's figures are on demand, from the figure data it
    logged, into `folder` (not logged: the caller says where they go). Returns `folder`."""
    import mlflow

    from pipeline.core import plots

    try:
        got = (client or mlflow.MlflowClient()).download_artifacts(
            run_id, f"{names.FIGURES_ARTIFACT}/{names.FIGURE_DATA_FILE}", str(folder)
        )
    except (mlflow.exceptions.MlflowException, OSError) as exc:
        raise PipelineError(
            f"run {run_id} has no {names.FIGURES_ARTIFACT}/{names.FIGURE_DATA_FILE} to draw its "
            f"figures from ({str(exc).splitlines()[0]}): only a sweep's models keep it, and "
            "their figures are drawn from it on demand."
        ) from None
    plots.save_figures(folder, plots.model_drawings(plots.load_figure_data(Path(got))))
    return folder


def write_history(history: dict[str, list[float]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["epoch", *history])
        for epoch, row in enumerate(zip(*history.values(), strict=True), start=1):
            writer.writerow([epoch, *(f"{v:.6f}" for v in row)])


def read_history(path: Path) -> dict[str, list[float]]:
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return {key: [float(r[key]) for r in rows] for key in rows[0] if key != "epoch"}


def write_predictions(y_true: np.ndarray, y_pred: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["actual", "predicted"])
        writer.writerows(zip(y_true.tolist(), y_pred.tolist(), strict=True))
