"""The experiment core: train and evaluate one configuration, logging to one explicit MLflow run.

Inputs are plain values: a validated `Config`, the data splits, the id of an open MLflow run
(see `tracking.model_run`) and an output folder. Below that folder it writes the layout of
paths.py: models/model.keras, reports/history.csv, reports/train.json, reports/metrics.json,
reports/predictions.csv and reports/figures/*.png. The run gets the same: the config as params,
per-epoch metrics, the training summary, test metrics, figures, the model and its registry
version.

`dvc repro` calls `train` (stage train) and `evaluate` (stage evaluate, which predicts in a worker
process) in two processes, with the project root as output folder; a sweep job calls both in one
process, each model with its own folder. It trains with a `Deferred`: the run's logging and the
model's saving are held back, then made with the model's evaluation in the background while the
next model trains (`finishing.Finishing`).
"""

from __future__ import annotations

import csv
import functools
import json
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import tracking
from pipeline.config import Config
from pipeline.data import sha256_file
from pipeline.paths import (
    FIGURES_DIR,
    HISTORY_CSV,
    METRICS_JSON,
    MODEL_PATH,
    PREDICTIONS_CSV,
    TRAIN_JSON,
)

if TYPE_CHECKING:  # TensorFlow is imported where a model is built or trained, so the evaluate
    import keras  # stage's own process, which only scores predictions, never loads it.

Split = tuple[np.ndarray, np.ndarray]
GRID = 32  # test digits in the predictions grid: half of them mistakes, where there are as many
EXAMPLE_INPUTS = 5  # validation digits the logged model's signature is read from


@dataclass(frozen=True)
class Evaluated:
    report: dict[str, Any]  # metrics.classification_report
    registered_version: str | None  # None: not registered (a sweep registers only its best)
    champion: bool


@dataclass(frozen=True)
class Trained:
    model: keras.Model
    history: dict[str, list[float]]
    summary: dict[str, Any]
    logged: Future[str]  # the logged model's URI, once `train`'s calls on the run are made

    @property
    def model_uri(self) -> str:
        """The logged model's URI; after `Deferred.replay` when `train` had a `Deferred`."""
        return self.logged.result(timeout=0)


class Deferred:
    """Calls on a model's run held back, to be made in order by `replay`: a sweep makes them in
    the background while its next model trains."""

    def __init__(self) -> None:
        self._calls: list[tuple[Future, Callable[[], Any]]] = []

    def __call__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        self._calls.append((future, functools.partial(fn, *args, **kwargs)))
        return future

    def replay(self) -> None:
        """Make the held calls in order. The first that fails raises; the rest are dropped."""
        calls, self._calls = self._calls, []
        for future, call in calls:
            future.set_result(call())


def _now(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
    future: Future = Future()
    future.set_result(fn(*args, **kwargs))
    return future


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
UNNAMED = ("data.", "tracking.", "sweep.", "seed", "model.name")  # not part of what a model is


@functools.cache
def _defaults(model_name: str) -> dict[str, Any]:
    from pipeline.config import compose

    return tracking.flatten(compose([f"model={model_name}"]))


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
    flat = tracking.flatten(cfg.to_dict())
    parts = [cfg.model.name, _label("model.hidden_units", cfg.model.hidden_units)]
    parts.append(_label("train.epochs", cfg.train.epochs))
    for key, value in flat.items():
        if key in ("model.hidden_units", "train.epochs") or key.startswith(UNNAMED):
            continue
        if defaults.get(key) != value:
            parts.append(_label(key, value))
    if with_seed or cfg.seed != defaults["seed"]:
        parts.append(f"s{cfg.seed}")
    return "-".join(parts)


def start(cfg: Config) -> None:
    """Fix threads, seeds and determinism. Call before the first tensor: TensorFlow fixes its
    thread counts once it has started."""
    from pipeline import model

    model.set_determinism(cfg.seed, cfg.train.intra_op_threads, cfg.train.inter_op_threads)


def epoch_logger(run_id: str, record: Callable[..., Any] = _now) -> keras.callbacks.Callback:
    """A Keras callback logging each epoch's metrics to `run_id` (step = epoch, from 1), through
    `record` (a `Deferred` holds them back), timed when the epoch ended."""
    import keras

    def log(epoch: int, logs: dict[str, float] | None) -> None:
        record(tracking.log_metrics, run_id, dict(logs or {}), step=epoch + 1, at=time.time())

    return keras.callbacks.LambdaCallback(on_epoch_end=log)


def train(
    cfg: Config,
    train_split: Split,
    val_split: Split,
    run_id: str,
    out: Path,
    deferred: Deferred | None = None,
) -> Trained:
    """Build and fit the configured model; save it, its history and summary under `out`; log
    the config, each epoch, the summary, the weights' digest and the model to `run_id`.

    With `deferred`, the logging and the model's saving are held there for `Deferred.replay`,
    made on a copy of the model: the returned model is free to train the next one.
    """
    from pipeline import model

    record = deferred or _now
    start(cfg)
    net = model.compiled_model(cfg.model, cfg.train)  # the last one's compiled steps, if it can
    record(tracking.log_params, run_id, tracking.flatten(cfg.to_dict()))
    record(tracking.log_datasets, run_id, {"train": train_split, "val": val_split})
    logger = epoch_logger(run_id, record)
    history, seconds = model.fit(net, train_split, val_split, cfg.train, [logger])
    summary = {
        tracking.TRAIN_SECONDS: round(seconds, 3),
        "train_examples": len(train_split[1]),
        **model.describe(net),
    }
    record(tracking.log_metrics, run_id, dict(summary))  # a copy: `summary` grows below
    summary[tracking.VAL_ACCURACY] = history[tracking.VAL_ACCURACY][-1]  # for `dvc exp show`
    write_history(history, out / HISTORY_CSV)
    (out / TRAIN_JSON).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    kept = net if deferred is None else model.detached_copy(net, cfg.model, cfg.train)
    example = np.asarray(val_split[0][:EXAMPLE_INPUTS])
    logged = record(_keep_model, kept, out / MODEL_PATH, run_id, example)
    return Trained(net, history, summary, logged)


def _keep_model(net: keras.Model, model_file: Path, run_id: str, example: np.ndarray) -> str:
    """Save `net` to `model_file`, tag the run with its digests, log it; return its URI."""
    from pipeline import model

    model.save_model(net, model_file)
    tracking.set_tags(
        run_id,
        {
            tracking.WEIGHTS_SHA256_TAG: model.weights_sha256(net),
            tracking.MODEL_SHA256_TAG: sha256_file(model_file),
        },
    )
    return tracking.log_keras_model(run_id, net, example)


def evaluate(
    cfg: Config,
    probs: np.ndarray,
    model_uri: str,
    history: dict[str, list[float]],
    test: Split,
    run_id: str,
    out: Path,
    register: bool = True,
) -> Evaluated:
    """Score the model's class probabilities `probs` for the test split; write metrics,
    predictions and figures under `out`, log them to `run_id`, and (with `register`) register
    the model at `model_uri`, judged on its validation accuracy (`tracking.register`)."""
    from pipeline import metrics, plots  # matplotlib: only where figures are drawn

    x, y = test
    tracking.log_datasets(run_id, {"test": test})
    y_pred = probs.argmax(axis=1)
    report = metrics.classification_report(y, probs)
    shown = plots.showcase(y, y_pred, GRID)
    figures = {
        "predictions.png": plots.prediction_grid(x[shown], y[shown], y_pred[shown]),
        "misclassified.png": plots.misclassified_gallery(x, y, y_pred, probs.max(axis=1)),
        "confusion_matrix.png": plots.confusion_heatmap(metrics.confusion_matrix(y, y_pred)),
        "learning_curves.png": plots.learning_curves(history),
    }
    figures_dir = out / FIGURES_DIR
    figures_dir.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        fig.savefig(figures_dir / name, dpi=100)
    (out / METRICS_JSON).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    write_predictions(y, y_pred, out / PREDICTIONS_CSV)
    scores = {
        k: report[k] for k in (tracking.TEST_ACCURACY, tracking.TEST_LOSS, tracking.MACRO_F1)
    }
    scores |= {tracking.F1_CLASS.format(c): v["f1"] for c, v in report["per_class"].items()}
    tracking.log_metrics(run_id, scores, model_uri=model_uri)
    tracking.log_artifacts(run_id, figures_dir, tracking.FIGURES_ARTIFACT)
    tracking.log_images(run_id, figures_dir)
    tracking.log_artifact(run_id, out / METRICS_JSON)
    if not register:
        return Evaluated(report, None, False)
    val_accuracy = history[tracking.VAL_ACCURACY][-1]
    version, promoted = tracking.register(
        run_id, model_uri, cfg.tracking.registered_model, val_accuracy
    )
    return Evaluated(report, version, promoted)


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
