"""The training step: how a model is fitted, in one place.

A `Trainer` fits compiled Keras models (core/model.py builds them) for a number of epochs of
shuffled batches, each epoch one compiled TensorFlow loop (`CompiledSteps`) over Keras's own
`train_step`, then a validation pass. It keeps the last model it handed out and its compiled
steps, so that the next model of the same settings (a sweep's next seed or epoch count) trains
without compiling again; whoever makes a `Trainer` owns that cache: the train stage makes one
for its model, a sweep process one for all its jobs.

`build_state` is the one call on Keras internals (`Model._symbolic_build`); tests/test_model.py
fails by name on a Keras version without it. No Hydra or MLflow here.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from pipeline.core import compile_cache
from pipeline.core.config import ModelConfig, TrainConfig
from pipeline.core.data import prepared
from pipeline.core.errors import PipelineError
from pipeline.core.model import build_model, compile_model
from pipeline.core.resume import Checkpoints
from pipeline.core.streaming import Streamed

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")
EPOCH_SECONDS = "epoch_seconds"  # also in the history: each epoch's wall time, validation included
# Cross-entropy of a uniform guess over 10 digits is ln 10 = 2.3, so a running loss above 1000
# is unmistakable divergence even before it overflows to NaN.
DIVERGED_LOSS = 1e3
EVAL_CHUNK = 1000  # examples per validation step: any size gives the same per-example results
DIVERGENCE_CHECK = 50  # a streamed epoch's batches between two looks at the loss

Split = tuple[Any, Any]  # (images, labels), as NumPy arrays or TensorFlow tensors


class TrainingDiverged(PipelineError):
    """The loss became NaN, infinite or absurdly large."""


def diverged(loss: float) -> bool:
    return not (np.isfinite(loss) and loss <= DIVERGED_LOSS)


def set_determinism(seed: int, intra_op_threads: int, inter_op_threads: int) -> None:
    """Seed Python, NumPy and TensorFlow, fix its thread counts, make its ops deterministic;
    keep compiled steps for the next process (core/compile_cache.py)."""
    import tensorflow as tf

    compile_cache.enable()

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


def build_state(model: keras.Model, batch: tuple[Any, Any]) -> None:
    """Create the loss and metric state `train_step` updates, as `model.fit` does first.

    Keras has no public call for this: `Model._symbolic_build` is what `fit` and `evaluate` use.
    keras is bounded in pyproject.toml; a version without it is refused here, by name.
    """
    if not hasattr(model, "_symbolic_build"):
        raise PipelineError(
            f"keras {keras.__version__} has no Model._symbolic_build, which "
            "pipeline.core.training.build_state uses to build loss and metric state; install "
            "the keras version uv.lock pins."
        )
    model._symbolic_build(data_batch=batch)


class CompiledSteps:
    """Keras's own `train_step` and `test_step`, run as compiled TensorFlow loops.

    One call trains a whole epoch: a `tf.while_loop` over its full batches, then the smaller last
    one, in one graph (one compilation), so Python, the data adapter and the per-step dispatch
    cost nothing per batch. The math is Keras's (same loss, optimizer, metrics and batch size);
    with `jit_compile` XLA fuses each step.
    """

    def __init__(self, model: keras.Model, batch_size: int, jit_compile: bool) -> None:
        self.model = model
        self.batch_size = batch_size
        self.jit_compile = jit_compile
        self._compile()

    def _compile(self) -> None:
        import tensorflow as tf

        model, size = self.model, self.batch_size

        def ok(loss: tf.Tensor) -> tf.Tensor:
            return tf.math.is_finite(loss) & (loss <= DIVERGED_LOSS)

        def batches(x: tf.Tensor, y: tf.Tensor, order: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            full, rest = divmod(order.shape[0], size)  # known when traced

            def going(i: tf.Tensor, loss: tf.Tensor) -> tf.Tensor:
                return (i < full) & ok(loss)

            def train(start: tf.Tensor, length: int) -> tf.Tensor:
                index = tf.slice(order, [start], [length])
                logs = model.train_step((tf.gather(x, index), tf.gather(y, index)))
                return tf.cast(logs["loss"], tf.float32)

            def step(i: tf.Tensor, loss: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
                return i + 1, train(i * size, size)

            def last() -> tuple[tf.Tensor, tf.Tensor]:
                return tf.constant(full + 1), train(tf.constant(full * size), rest)

            done = (tf.constant(0), tf.constant(0.0))
            if full:
                done = tf.while_loop(going, step, done)
            if not rest:
                return done
            return tf.cond((done[0] == full) & ok(done[1]), last, lambda: done)

        def test(x: tf.Tensor, y: tf.Tensor) -> None:
            model.test_step((x, y))

        def one(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
            return tf.cast(model.train_step((x, y))["loss"], tf.float32)

        jit = self.jit_compile
        self._batches = tf.function(batches, jit_compile=jit)
        self._one = tf.function(one, jit_compile=jit)  # a streamed batch
        self._test = tf.function(test, jit_compile=jit)

    def train_epoch(self, x: Any, y: Any, order: np.ndarray) -> tuple[int, float]:
        """Train on the batches of `order` (shuffled indices), the last one smaller if the
        examples do not fill it (all of them, for a dataset smaller than one batch); stop early
        if the loss diverges. Returns the batches trained and the running loss after the last.
        """
        import tensorflow as tf

        done, loss = self._xla_or_not("_batches", x, y, tf.constant(order))
        return int(done), float(loss)

    def train_stream(self, batches: Any) -> tuple[int, float]:
        """Train on each (images, labels) batch of a streamed epoch (core/streaming.py), one
        compiled step each; stop early if the loss diverges. Returns the batches trained and
        the running loss after the last."""
        done, loss = 0, None
        for x, y in batches:
            loss = self._xla_or_not("_one", x, y)
            done += 1
            if done % DIVERGENCE_CHECK == 0 and diverged(float(loss)):
                break
        return done, 0.0 if loss is None else float(loss)

    def _xla_or_not(self, step: str, *args: Any) -> Any:
        """Run a compiled `step`; where XLA cannot compile the model deterministically, say
        so and run it without XLA from then on (XLA refuses before anything runs)."""
        import tensorflow as tf

        try:
            return getattr(self, step)(*args)
        except (tf.errors.DataLossError, tf.errors.OutOfRangeError) as exc:
            cache = compile_cache.in_use()
            if cache is None or not self.jit_compile:
                raise
            ours = cache == compile_cache.folder()
            if ours:
                compile_cache.clear(cache)
            raise PipelineError(
                f"XLA could not read what it compiled before from its cache {cache} "
                f"({exc.message.splitlines()[0]}); "
                + ("it is cleared now: " if ours else "delete what it holds and ")
                + "run the command again (or set "
                f"{compile_cache.CACHE_ENV}=off to compile without the cache)."
            ) from None
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

    def evaluate(self, data: Split | Streamed) -> dict[str, float]:
        """The loss and metrics over `data`, EVAL_CHUNK examples at a time."""
        self.model.reset_metrics()
        if isinstance(data, Streamed):
            for x, y in data.in_order(EVAL_CHUNK):
                self._test(x, y)
        else:
            x, y = data
            for start in range(0, len(y), EVAL_CHUNK):
                self._test(x[start : start + EVAL_CHUNK], y[start : start + EVAL_CHUNK])
        return {k: float(v) for k, v in self.model.get_metrics_result().items()}


class Detached:
    """A trained model's weights and optimizer state, copied out so that the model can train
    again (a sweep's next seed) while another thread saves, logs and scores this one: `model()`
    puts them into a model of the same build (the shadow) and returns it. The shadow is shared
    by the models of one compiled configuration: call `model()` from one thread, in turn."""

    def __init__(self, arrays: list[np.ndarray], shadow: keras.Model) -> None:
        self._arrays, self._shadow = arrays, shadow

    def with_arrays(self, arrays: list[np.ndarray]) -> Detached:
        """Another state (an `EpochSnapshots` copy) of the same model, put into the same shadow."""
        return Detached(arrays, self._shadow)

    def model(self) -> keras.Model:
        targets = [*self._shadow.weights, *self._shadow.optimizer.variables]
        for target, value in zip(targets, self._arrays, strict=True):
            target.assign(value)
        return self._shadow


class EpochSnapshots(keras.callbacks.Callback):
    """A Keras callback copying the model's weights and optimizer state at the end of each of
    `epochs` (counted from 1). Nothing in an epoch depends on the total epoch count (a constant
    learning rate, each epoch's order the next draw of the seeded generator), so the copy after
    epoch k is, bit for bit, what a training of k epochs alone ends with. Copying draws no
    random number."""

    def __init__(self, epochs: Sequence[int]) -> None:
        super().__init__()
        self.epochs = set(epochs)
        self.taken: dict[int, list[np.ndarray]] = {}

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if epoch + 1 in self.epochs:
            model = self.model
            self.taken[epoch + 1] = [
                np.array(v) for v in (*model.weights, *model.optimizer.variables)
            ]


@dataclass
class _Compiled:
    """The last model a `Trainer` handed out, with what it needs to start over."""

    key: str  # the model and training settings, but for the epoch count
    model: keras.Model
    steps: CompiledSteps | None = None  # set by the first `fit`
    optimizer_start: list[np.ndarray] = field(default_factory=list)  # after `optimizer.build`
    shadow: keras.Model | None = None  # where `detach` puts a trained model's state


class Trainer:
    """Fits models, keeping the last one it handed out (`new_model`) with its compiled steps."""

    def __init__(self) -> None:
        self._last: _Compiled | None = None

    def new_model(
        self,
        model_cfg: ModelConfig,
        train_cfg: TrainConfig,
        num_classes: int,
        shape: Sequence[int],
    ) -> keras.Model:
        """A compiled model to train, in the state a new one built now would have.

        Call after `set_determinism`. When only the seed or the epoch count differ from the last
        call's settings (the seeds and epoch counts of a sweep), it is the last call's model,
        with its compiled training steps, reset: weights (and random-generator states) from a
        new model built with this seed, the optimizer's state back to zero. Building that new
        model draws the same random numbers as training a new one would, so the result is
        bit-identical to a fresh run with this seed, without compiling the training step again.
        """
        shape = tuple(shape)
        key = json.dumps(
            [model_cfg.model_dump(), train_cfg.model_dump(exclude={"epochs"}), num_classes, shape]
        )
        last = self._last
        if last is None or last.key != key or last.steps is None:
            self._last = None  # let the last model and its compiled steps go
            built = build_model(model_cfg, num_classes, shape)
            self._last = _Compiled(key, compile_model(built, train_cfg))
            return self._last.model
        new = build_model(model_cfg, num_classes, shape)
        if len(new.layers) != len(last.model.layers):
            raise PipelineError(
                f"model {model_cfg.name} built {len(new.layers)} layers, then "
                f"{len(last.model.layers)}: its builder must not vary"
            )
        for target, source in zip(last.model.layers, new.layers, strict=True):
            for variable, value in zip(target.variables, source.variables, strict=True):
                variable.assign(value)
        for variable, value in zip(
            last.model.optimizer.variables, last.optimizer_start, strict=True
        ):
            variable.assign(value)
        last.model.stop_training = False
        return last.model

    def compiled_steps(self, model: keras.Model, batch: Split, cfg: TrainConfig) -> CompiledSteps:
        """The compiled steps of `model`: the ones made before if it is the last model handed
        out, else new ones, after creating the loss, metric and optimizer state they update."""
        last = self._last if self._last is not None and self._last.model is model else None
        if last is not None and last.steps is not None:
            return last.steps
        build_state(model, batch)
        model.optimizer.build(model.trainable_variables)
        steps = CompiledSteps(model, cfg.batch_size, cfg.jit_compile)
        if last is not None:
            last.optimizer_start = [np.array(v) for v in model.optimizer.variables]
            last.steps = steps
        return steps

    def fit(
        self,
        model: keras.Model,
        train: Split | Streamed,
        val: Split | Streamed,
        cfg: TrainConfig,
        callbacks: Sequence[keras.callbacks.Callback] = (),
        checkpoints: Checkpoints | None = None,
    ) -> tuple[dict[str, list[float]], float]:
        """Fit a compiled `model` for `cfg.epochs` epochs of shuffled batches of `cfg.batch_size`.

        Each epoch trains on every example once (the last batch may be smaller), then scores the
        validation set. Keras callbacks get `on_epoch_begin`/`on_epoch_end` with the epoch's
        logs, as under `model.fit`, and `model.stop_training` ends training. Returns the
        per-epoch history (HISTORY_KEYS and EPOCH_SECONDS) and the seconds it took. Shuffling
        draws from NumPy's global generator, which `set_determinism` seeds: a split in memory
        is shuffled whole, a `Streamed` one through its bounded buffer (core/streaming.py).
        With `checkpoints` (core/resume.py), the training's state is saved at each epoch's end,
        and a training that finds one of its own there resumes after its epoch (its history
        begins with the epochs done; callbacks see the epochs that run).
        """
        start = time.perf_counter()
        streamed = isinstance(train, Streamed)
        if not streamed:
            train = as_tensors(train)  # no copy for tensors
        if not isinstance(val, Streamed):
            val = as_tensors(val)
        first = (
            (train.head(1), np.zeros(1, np.uint8)) if streamed else (train[0][:1], train[1][:1])
        )
        steps = self.compiled_steps(model, first, cfg)
        hooks = keras.callbacks.CallbackList(list(callbacks), model=model, epochs=cfg.epochs)
        history: dict[str, list[float]] = {k: [] for k in (*HISTORY_KEYS, EPOCH_SECONDS)}
        resumed = checkpoints.restore(model, cfg.epochs) if checkpoints else None
        if checkpoints is not None:
            checkpoints.resumed = resumed
        if resumed is not None:
            history = {k: list(resumed.history[k]) for k in history}
            print(f"train: resuming from epoch {resumed.epoch} ({checkpoints.folder})")
        model.stop_training = False
        hooks.on_train_begin()
        for epoch in range(resumed.epoch if resumed else 0, cfg.epochs):
            hooks.on_epoch_begin(epoch)
            began = time.perf_counter()
            model.reset_metrics()
            if streamed:
                batches = train.epoch(cfg.batch_size, cfg.shuffle_buffer_mb << 20)
                done, loss = steps.train_stream(batches)
            else:
                order = np.random.permutation(len(train[1])).astype(np.int32)
                done, loss = steps.train_epoch(train[0], train[1], order)
            if diverged(loss):
                raise TrainingDiverged(
                    f"training diverged in epoch {epoch + 1} at batch {done}: loss {loss:.4g} (a "
                    f"random guess scores {np.log(model.output_shape[-1]):.2f}), so it stopped "
                    f"there. Lower train.learning_rate (received {cfg.learning_rate})."
                )
            logs = {k: float(v) for k, v in model.get_metrics_result().items()}
            logs |= {f"val_{k}": v for k, v in steps.evaluate(val).items()}
            logs[EPOCH_SECONDS] = time.perf_counter() - began
            hooks.on_epoch_end(epoch, logs)
            for key in history:
                history[key].append(logs[key])
            if checkpoints is not None:
                checkpoints.save(epoch + 1, model, history)
            shown = " - ".join(f"{k}: {logs[k]:.4f}" for k in HISTORY_KEYS)
            print(f"Epoch {epoch + 1}/{cfg.epochs} - {logs[EPOCH_SECONDS]:.2f}s - {shown}")
            if model.stop_training:
                break
        hooks.on_train_end()
        return history, time.perf_counter() - start

    def detach(
        self, model: keras.Model, model_cfg: ModelConfig, train_cfg: TrainConfig
    ) -> Detached:
        """`model`'s state as a `Detached`, for work that goes on while `model` trains again. The
        shadow it goes into is built once per model `new_model` hands out; saved, it gives the
        same file as `model`. Building it draws random numbers: call this after training, before
        the next `set_determinism`."""
        arrays = [np.array(v) for v in (*model.weights, *model.optimizer.variables)]
        last = self._last if self._last is not None and self._last.model is model else None
        if last is not None and last.shadow is not None:
            return Detached(arrays, last.shadow)
        classes, shape = model.output_shape[-1], tuple(model.input_shape[1:])
        shadow = compile_model(build_model(model_cfg, classes, shape), train_cfg)
        shadow.optimizer.build(shadow.trainable_variables)
        if last is not None:
            last.shadow = shadow
        return Detached(arrays, shadow)


def as_tensors(data: Split) -> Split:
    """(x, y) as TensorFlow tensors. Converted before training, the NumPy arrays can be freed:
    converting inside `fit` would hold the training set in memory twice."""
    import tensorflow as tf

    return tf.convert_to_tensor(data[0]), tf.convert_to_tensor(data[1])


@functools.cache
def prepared_tensors(root: Path, split: str) -> Split:
    """A split of the project's prepared data (`data.prepared`) as tensors, loaded once per
    process: the models of a sweep train on the same data, and a copy of the training set costs
    up to half a second. Call after `set_determinism`."""
    return as_tensors(prepared(root, split).whole())


def training_data(root: Path, split: str, cfg: TrainConfig, first: int | None = None) -> Any:
    """A prepared split to train or validate on: its first `first` examples (all: None) as
    tensors in memory when their pixels as float32 take at most `cfg.in_memory_mb` megabytes,
    else `Streamed` from its shards."""
    shards = prepared(root, split)
    n = len(shards) if first is None else min(first, len(shards))
    if n * int(np.prod(shards.shape)) * 4 > cfg.in_memory_mb << 20:
        return Streamed(shards, first)
    return limit(prepared_tensors(root, split), first)


def shape_of(data: Split | Streamed) -> tuple[int, ...]:
    """(examples, height, width, channels) of a split in memory or streamed."""
    return tuple(data.shape) if isinstance(data, Streamed) else tuple(data[0].shape)


def head(data: Split | Streamed, n: int) -> np.ndarray:
    """The first `n` images of a split, as float32 inputs."""
    return data.head(n) if isinstance(data, Streamed) else np.asarray(data[0][:n])


def limit(data: Split, max_examples: int | None) -> Split:
    """The first `max_examples` examples of (x, y), or all of them when it is None."""
    x, y = data
    return (x, y) if max_examples is None else (x[:max_examples], y[:max_examples])
