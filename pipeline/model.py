"""Model builders and training: plain functions over plain values, no Hydra or MLflow inside.

`BUILDERS` maps `model.name` to a builder taking that model's config keys as arguments.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from pipeline.config import ModelConfig, TrainConfig
from pipeline.data import IMAGE_SHAPE, NUM_CLASSES, sha256_file
from pipeline.errors import PipelineError

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


def build_mlp(hidden_units: int) -> keras.Model:
    """Flatten(28x28) -> Dense(hidden_units, relu) -> Dense(10, softmax): the seed model."""
    return keras.Sequential(
        [
            keras.Input(shape=IMAGE_SHAPE),
            keras.layers.Flatten(),
            keras.layers.Dense(hidden_units, activation="relu"),
            keras.layers.Dense(NUM_CLASSES, activation="softmax"),
        ],
        name="mlp",
    )


def build_cnn(
    filters: Sequence[int], kernel_size: int, hidden_units: int, dropout: float
) -> keras.Model:
    """A small convnet: per entry of `filters` a conv + 2x2 max-pool block, then a dense head."""
    layers: list[keras.layers.Layer] = [
        keras.Input(shape=IMAGE_SHAPE),
        keras.layers.Reshape((*IMAGE_SHAPE, 1)),
    ]
    for n in filters:
        layers += [
            keras.layers.Conv2D(n, kernel_size, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
        ]
    layers += [
        keras.layers.Flatten(),
        keras.layers.Dropout(dropout),
        keras.layers.Dense(hidden_units, activation="relu"),
        keras.layers.Dense(NUM_CLASSES, activation="softmax"),
    ]
    return keras.Sequential(layers, name="cnn")


BUILDERS: dict[str, Callable[..., keras.Model]] = {"mlp": build_mlp, "cnn": build_cnn}


def build_model(cfg: ModelConfig) -> keras.Model:
    """Build the model `cfg.name` names, passing it the rest of `cfg` as arguments."""
    params = {k: v for k, v in vars(cfg).items() if k != "name"}
    return BUILDERS[cfg.name](**params)


def compile_model(model: keras.Model, train: TrainConfig) -> keras.Model:
    optimizers = {
        "adam": keras.optimizers.Adam,
        "sgd": keras.optimizers.SGD,
        "rmsprop": keras.optimizers.RMSprop,
    }
    model.compile(
        optimizer=optimizers[train.optimizer](learning_rate=train.learning_rate),
        loss=train.loss,
        metrics=list(train.metrics),
    )
    return model


def set_determinism(seed: int, intra_op_threads: int, inter_op_threads: int) -> None:
    """Seed Python, NumPy and TensorFlow, fix its thread counts, make its ops deterministic."""
    import tensorflow as tf

    threading = tf.config.threading
    wanted = {"intra_op": intra_op_threads, "inter_op": inter_op_threads}
    current = {
        "intra_op": threading.get_intra_op_parallelism_threads(),
        "inter_op": threading.get_inter_op_parallelism_threads(),
    }
    if wanted != current:
        try:
            threading.set_intra_op_parallelism_threads(intra_op_threads)
            threading.set_inter_op_parallelism_threads(inter_op_threads)
        except RuntimeError as exc:  # TensorFlow fixes them once it has started
            raise PipelineError(
                f"thread counts {wanted} cannot replace {current} in a process where "
                "TensorFlow already ran; sweep them with hydra/launcher=joblib."
            ) from exc
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def weights_sha256(model: keras.Model) -> str:
    """SHA-256 over every weight array in order: equal only for bit-identical models."""
    digest = hashlib.sha256()
    for array in model.get_weights():
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


class TrainingDiverged(PipelineError):
    """The loss became NaN, infinite or absurdly large."""


class StopOnDivergence(keras.callbacks.Callback):
    """Stop at the first batch whose loss is not finite or above `limit`; remember where.

    Cross-entropy of a uniform guess over 10 digits is ln 10 = 2.3, so a running loss above
    1000 is unmistakable divergence even before it overflows to NaN.
    """

    def __init__(self, limit: float = 1e3) -> None:
        super().__init__()
        self.limit = limit
        self.epoch = 0
        self.diverged: tuple[int, int, float] | None = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = float((logs or {}).get("loss", 0.0))
        if not np.isfinite(loss) or loss > self.limit:
            self.diverged = (self.epoch, batch + 1, loss)
            self.model.stop_training = True


def fit(
    model: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    cfg: TrainConfig,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> tuple[dict[str, list[float]], float]:
    """Fit `model`; return its per-epoch history (HISTORY_KEYS) and the seconds `fit` took."""
    verbose = 1 if sys.stdout.isatty() else 2  # a progress bar only where it can redraw
    guard = StopOnDivergence()
    start = time.perf_counter()
    history = model.fit(
        *train,
        validation_data=val,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        callbacks=[guard, *callbacks],
        verbose=verbose,
    )
    seconds = time.perf_counter() - start
    if guard.diverged:
        epoch, batch, loss = guard.diverged
        raise TrainingDiverged(
            f"training diverged in epoch {epoch} at batch {batch}: loss {loss:.4g} (a random "
            f"guess scores {np.log(NUM_CLASSES):.2f}), so it stopped there. Lower "
            f"train.learning_rate (received {cfg.learning_rate})."
        )
    return {k: [float(v) for v in history.history[k]] for k in HISTORY_KEYS}, seconds


def save_model(model: keras.Model, path: Path) -> None:
    """Save in the `.keras` format, atomically: a failed save leaves no file at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_model(path: Path, sha256: str | None = None) -> keras.Model:
    """Load a `.keras` model with safe_mode on: no code from the file is run.

    With `sha256`, the file must have that digest (the one recorded for its run).
    """
    path = Path(path)
    if path.suffix != ".keras" or not path.is_file():
        raise PipelineError(
            f"model file {path} not found (only .keras files are loaded); "
            "run `uv run dvc repro train` first."
        )
    if sha256 is not None and (actual := sha256_file(path)) != sha256:
        raise PipelineError(
            f"{path} has SHA-256 {actual}, but {sha256} was recorded when it was trained; "
            "it was changed since. Retrain with `uv run dvc repro --force train`."
        )
    try:
        return keras.models.load_model(path, safe_mode=True)
    except ValueError as exc:
        raise PipelineError(f"refused to load {path}: {exc}") from exc


def limit(
    data: tuple[np.ndarray, np.ndarray], max_examples: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """The first `max_examples` examples of (x, y), or all of them when it is None."""
    x, y = data
    return (x, y) if max_examples is None else (x[:max_examples], y[:max_examples])


def describe(model: keras.Model) -> dict[str, Any]:
    return {"model_params": int(model.count_params()), "model_layers": len(model.layers)}
