"""Model builders and training: plain functions over plain values, no Hydra or MLflow inside.

`BUILDERS` maps `model.name` to a builder taking that model's config keys as arguments.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from pipeline.core.config import ModelConfig, TrainConfig
from pipeline.core.data import check_model_file, prepared
from pipeline.core.errors import PipelineError

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")
EPOCH_SECONDS = "epoch_seconds"  # also in the history: each epoch's wall time, validation included


def build_mlp(hidden_units: int, num_classes: int, shape: tuple[int, int]) -> keras.Model:
    """Flatten(`shape`, 28x28 for MNIST) -> Dense(hidden_units, relu) -> Dense(num_classes,
    softmax): the seed model."""
    return keras.Sequential(
        [
            keras.Input(shape=shape),
            keras.layers.Flatten(),
            keras.layers.Dense(hidden_units, activation="relu"),
            keras.layers.Dense(num_classes, activation="softmax"),
        ],
        name="mlp",
    )


def build_cnn(
    filters: Sequence[int],
    kernel_size: int,
    hidden_units: int,
    dropout: float,
    num_classes: int,
    shape: tuple[int, int],
) -> keras.Model:
    """A small convnet on `shape` grayscale images: per entry of `filters` a conv + 2x2
    max-pool block, then a dense head."""
    layers: list[keras.layers.Layer] = [
        keras.Input(shape=shape),
        keras.layers.Reshape((*shape, 1)),
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
        keras.layers.Dense(num_classes, activation="softmax"),
    ]
    return keras.Sequential(layers, name="cnn")


BUILDERS: dict[str, Callable[..., keras.Model]] = {"mlp": build_mlp, "cnn": build_cnn}


def build_model(cfg: ModelConfig, num_classes: int, shape: tuple[int, int]) -> keras.Model:
    """Build the model `cfg.name` names for `num_classes` classes of `shape` images, passing it
    the rest of `cfg` as arguments."""
    options = cfg.model_dump(exclude={"name"})
    return BUILDERS[cfg.name](**options, num_classes=num_classes, shape=tuple(shape))


def compile_model(model: keras.Model, train: TrainConfig) -> keras.Model:
    """Give `model` the optimizer, loss and metrics of `train`."""
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


@dataclass
class _Compiled:
    """The last model `compiled_model` handed out, with what it needs to start over."""

    key: str  # the model and training settings, but for the epoch count
    model: keras.Model
    steps: CompiledSteps | None = None  # set by the first `fit`
    optimizer_start: list[np.ndarray] = field(default_factory=list)  # after `optimizer.build`
    shadow: keras.Model | None = None  # where `detached` puts a trained model's state


_last: _Compiled | None = None


def compiled_model(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    num_classes: int,
    shape: tuple[int, int],
) -> keras.Model:
    """A compiled model to train, in the state a new one built now would have.

    Call after `set_determinism`. When only the seed or the epoch count differ from the last
    call's settings (the seeds and epoch counts of a sweep), it is the last call's model, with
    its compiled training steps, reset: weights (and random-generator states) from a new model
    built with this seed, the optimizer's state back to zero. Building that new model draws the
    same random numbers as training a new one would, so the result is bit-identical to a fresh
    run with this seed, without compiling the training step again.
    """
    global _last
    key = json.dumps(
        [model_cfg.model_dump(), train_cfg.model_dump(exclude={"epochs"}), num_classes, shape]
    )
    if _last is None or _last.key != key or _last.steps is None:
        _last = None  # let the last model and its compiled steps go
        built = build_model(model_cfg, num_classes, shape)
        _last = _Compiled(key, compile_model(built, train_cfg))
        return _last.model
    new = build_model(model_cfg, num_classes, shape)
    if len(new.layers) != len(_last.model.layers):
        raise PipelineError(
            f"model {model_cfg.name} built {len(new.layers)} layers, then "
            f"{len(_last.model.layers)}: its builder must not vary"
        )
    for target, source in zip(_last.model.layers, new.layers, strict=True):
        for variable, value in zip(target.variables, source.variables, strict=True):
            variable.assign(value)
    optimizer = _last.model.optimizer
    for variable, value in zip(optimizer.variables, _last.optimizer_start, strict=True):
        variable.assign(value)
    _last.model.stop_training = False
    return _last.model


def _compiled_steps(
    model: keras.Model, batch: tuple[Any, Any], batch_size: int, jit_compile: bool
) -> CompiledSteps:
    """The compiled steps of `model`: the ones made before for it by `compiled_model`'s last
    model, else new ones, after creating the loss, metric and optimizer state they update."""
    if _last is not None and _last.model is model and _last.steps is not None:
        return _last.steps
    build_state(model, batch)
    model.optimizer.build(model.trainable_variables)
    steps = CompiledSteps(model, batch_size, jit_compile)
    if _last is not None and _last.model is model:
        _last.optimizer_start = [np.array(v) for v in model.optimizer.variables]
        _last.steps = steps
    return steps


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


class Detached:
    """A trained model's weights and optimizer state, copied out so that the model can train
    again (a sweep's next seed) while another thread saves, logs and scores this one: `model()`
    puts them into a model of the same build (the shadow) and returns it. The shadow is shared
    by the models of one compiled configuration: call `model()` from one thread, in turn."""

    def __init__(self, arrays: list[np.ndarray], shadow: keras.Model) -> None:
        self._arrays, self._shadow = arrays, shadow

    def model(self) -> keras.Model:
        targets = [*self._shadow.weights, *self._shadow.optimizer.variables]
        for target, value in zip(targets, self._arrays, strict=True):
            target.assign(value)
        return self._shadow


def detached(model: keras.Model, model_cfg: ModelConfig, train_cfg: TrainConfig) -> Detached:
    """`model`'s state as a `Detached`, for work that goes on while `model` trains again. The
    shadow it goes into is built once per model `compiled_model` hands out; saved, it gives the
    same file as `model`. Building it draws random numbers: call this after training, before
    the next `set_determinism`."""
    arrays = [np.array(v) for v in (*model.weights, *model.optimizer.variables)]
    reused = _last is not None and _last.model is model
    if reused and _last.shadow is not None:
        return Detached(arrays, _last.shadow)
    classes, shape = model.output_shape[-1], tuple(model.input_shape[1:3])
    shadow = compile_model(build_model(model_cfg, classes, shape), train_cfg)
    shadow.optimizer.build(shadow.trainable_variables)
    if reused:
        _last.shadow = shadow
    return Detached(arrays, shadow)


def weights_sha256(model: keras.Model) -> str:
    """SHA-256 over every weight array in order: equal only for bit-identical models."""
    digest = hashlib.sha256()
    for array in model.get_weights():
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


class TrainingDiverged(PipelineError):
    """The loss became NaN, infinite or absurdly large."""


# Cross-entropy of a uniform guess over 10 digits is ln 10 = 2.3, so a running loss above 1000
# is unmistakable divergence even before it overflows to NaN.
DIVERGED_LOSS = 1e3
EVAL_CHUNK = 1000  # examples per validation step: any size gives the same per-example results


def diverged(loss: float) -> bool:
    return not (np.isfinite(loss) and loss <= DIVERGED_LOSS)


class CompiledSteps:
    """Keras's own `train_step` and `test_step`, run as compiled TensorFlow loops.

    One call trains a whole epoch: a `tf.while_loop` over its batches in one graph, so Python,
    the data adapter and the per-step dispatch cost nothing per batch. The math is Keras's
    (same loss, optimizer, metrics and batch size); with `jit_compile` XLA fuses each step.
    """

    def __init__(self, model: keras.Model, batch_size: int, jit_compile: bool) -> None:
        self.model = model
        self.batch_size = batch_size
        self.jit_compile = jit_compile
        self._compile()

    def _compile(self) -> None:
        import tensorflow as tf

        model, size = self.model, self.batch_size

        def batches(x: tf.Tensor, y: tf.Tensor, order: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            def going(i: tf.Tensor, loss: tf.Tensor) -> tf.Tensor:
                ok = tf.math.is_finite(loss) & (loss <= DIVERGED_LOSS)
                return (i < tf.shape(order)[0] // size) & ok

            def step(i: tf.Tensor, loss: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
                index = tf.slice(order, [i * size], [size])
                logs = model.train_step((tf.gather(x, index), tf.gather(y, index)))
                return i + 1, tf.cast(logs["loss"], tf.float32)

            return tf.while_loop(going, step, (tf.constant(0), tf.constant(0.0)))

        def one_batch(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
            return tf.cast(model.train_step((x, y))["loss"], tf.float32)

        def test(x: tf.Tensor, y: tf.Tensor) -> None:
            model.test_step((x, y))

        jit = self.jit_compile
        self._batches = tf.function(batches, jit_compile=jit)
        self._one_batch = tf.function(one_batch, jit_compile=jit)
        self._test = tf.function(test, jit_compile=jit)

    def train_epoch(self, x: Any, y: Any, order: np.ndarray) -> tuple[int, float]:
        """Train on the batches of `order` (shuffled indices), the last one smaller if the
        examples do not fill it (all of them, for a dataset smaller than one batch); stop early
        if the loss diverges. Returns the batches trained and the running loss after the last.
        """
        import tensorflow as tf

        full = len(order) // self.batch_size
        done, loss = self._xla_or_not("_batches", x, y, tf.constant(order)) if full else (0, 0.0)
        done, loss = int(done), float(loss)
        rest = order[done * self.batch_size :]
        if len(rest) and done == full and not diverged(loss):
            loss = float(self._xla_or_not("_one_batch", tf.gather(x, rest), tf.gather(y, rest)))
            done += 1
        return done, loss

    def _xla_or_not(self, step: str, *args: Any) -> Any:
        """Run the compiled `step`; where XLA cannot compile the model deterministically, say
        so and run it without XLA from then on (XLA refuses before anything runs)."""
        import tensorflow as tf

        try:
            return getattr(self, step)(*args)
        except tf.errors.UnimplementedError as exc:
            if not self.jit_compile:
                raise
            reason = exc.message.splitlines()[0]
            print(
                f"train: XLA cannot compile this model deterministically ({reason}); "
                "training without XLA.",
                file=sys.stderr,
            )
            self.jit_compile = False
            self._compile()
            return getattr(self, step)(*args)

    def evaluate(self, x: Any, y: Any) -> dict[str, float]:
        self.model.reset_metrics()
        for start in range(0, len(y), EVAL_CHUNK):
            self._test(x[start : start + EVAL_CHUNK], y[start : start + EVAL_CHUNK])
        return {k: float(v) for k, v in self.model.get_metrics_result().items()}


def build_state(model: keras.Model, batch: tuple[Any, Any]) -> None:
    """Create the loss and metric state `train_step` updates, as `model.fit` does first.

    Keras has no public call for this: `Model._symbolic_build` is what `fit` and `evaluate` use.
    keras is bounded in pyproject.toml, and tests/test_model.py fails by name if it goes.
    """
    if not hasattr(model, "_symbolic_build"):
        raise PipelineError(
            f"keras {keras.__version__} has no Model._symbolic_build, which "
            "pipeline.core.model.fit uses to build loss and metric state; install the keras "
            "version uv.lock pins."
        )
    model._symbolic_build(data_batch=batch)


def as_tensors(data: tuple[np.ndarray, np.ndarray]) -> tuple[Any, Any]:
    """(x, y) as TensorFlow tensors. Converted before training, the NumPy arrays can be freed:
    converting inside `fit` would hold the training set in memory twice."""
    import tensorflow as tf

    return tf.convert_to_tensor(data[0]), tf.convert_to_tensor(data[1])


@functools.cache
def prepared_tensors(root: Path, split: str) -> tuple[Any, Any]:
    """A split of the project's prepared data (`data.prepared`) as tensors, converted once per
    process: the models of a sweep train on the same data, and a copy of the training set costs
    up to half a second. Call after `set_determinism`."""
    return as_tensors(prepared(root, split))


def fit(
    model: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    cfg: TrainConfig,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> tuple[dict[str, list[float]], float]:
    """Fit a compiled `model` for `cfg.epochs` epochs of shuffled batches of `cfg.batch_size`.

    Each epoch trains on every example once (the last batch may be smaller), then scores the
    validation set. Keras callbacks get `on_epoch_begin`/`on_epoch_end` with the epoch's logs,
    as under `model.fit`, and `model.stop_training` ends training. Returns the per-epoch
    history (HISTORY_KEYS) and the seconds it took. Shuffling draws from NumPy's global
    generator, which `set_determinism` seeds.
    """

    start = time.perf_counter()
    (x, y), (x_val, y_val) = as_tensors(train), as_tensors(val)  # no copy for tensors
    steps = _compiled_steps(model, (x[:1], y[:1]), cfg.batch_size, cfg.jit_compile)
    hooks = keras.callbacks.CallbackList(list(callbacks), model=model, epochs=cfg.epochs)
    history: dict[str, list[float]] = {k: [] for k in (*HISTORY_KEYS, EPOCH_SECONDS)}
    model.stop_training = False
    hooks.on_train_begin()
    for epoch in range(cfg.epochs):
        hooks.on_epoch_begin(epoch)
        began = time.perf_counter()
        model.reset_metrics()
        done, loss = steps.train_epoch(x, y, np.random.permutation(len(train[1])).astype(np.int32))
        if diverged(loss):
            raise TrainingDiverged(
                f"training diverged in epoch {epoch + 1} at batch {done}: loss {loss:.4g} (a "
                f"random guess scores {np.log(model.output_shape[-1]):.2f}), so it stopped "
                f"there. Lower train.learning_rate (received {cfg.learning_rate})."
            )
        logs = {k: float(v) for k, v in model.get_metrics_result().items()}
        logs |= {f"val_{k}": v for k, v in steps.evaluate(x_val, y_val).items()}
        logs[EPOCH_SECONDS] = time.perf_counter() - began
        hooks.on_epoch_end(epoch, logs)
        for key in history:
            history[key].append(logs[key])
        shown = " - ".join(f"{k}: {logs[k]:.4f}" for k in HISTORY_KEYS)
        print(f"Epoch {epoch + 1}/{cfg.epochs} - {logs[EPOCH_SECONDS]:.2f}s - {shown}")
        if model.stop_training:
            break
    hooks.on_train_end()
    return history, time.perf_counter() - start


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
    check_model_file(path, sha256)
    try:
        return keras.models.load_model(path, safe_mode=True)
    except ValueError as exc:
        raise PipelineError(f"refused to load {path}: {exc}") from exc


PREDICT_CHUNK = 1024


def predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Class probabilities for every image in `x`, shape (len(x), 10): the same numbers as
    `model.predict(x, batch_size=PREDICT_CHUNK)`, without its per-call set-up (0.06 s)."""
    if len(x) == 0:
        return np.zeros((0, model.output_shape[-1]), dtype=np.float32)
    chunks = range(0, len(x), PREDICT_CHUNK)
    return np.concatenate([model.predict_on_batch(x[i : i + PREDICT_CHUNK]) for i in chunks])


def predict_file(path: Path, sha256: str | None, x: np.ndarray) -> np.ndarray:
    """`predict` with the model saved at `path`, its digest checked before it is loaded."""
    return predict(load_model(path, sha256), x)


def limit(
    data: tuple[np.ndarray, np.ndarray], max_examples: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """The first `max_examples` examples of (x, y), or all of them when it is None."""
    x, y = data
    return (x, y) if max_examples is None else (x[:max_examples], y[:max_examples])


def describe(model: keras.Model) -> dict[str, Any]:
    return {"model_params": int(model.count_params()), "model_layers": len(model.layers)}
