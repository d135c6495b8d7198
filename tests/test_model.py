from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import ROOT, run
from pipeline.core.config import CNNConfig, MLPConfig, compose, validate
from pipeline.core.errors import PipelineError
from pipeline.core.model import (
    build_cnn,
    build_mlp,
    build_model,
    compile_model,
    load_model,
    save_model,
    weights_sha256,
)
from pipeline.core.training import Trainer, build_state, limit


def test_mlp_is_the_seed_model() -> None:
    model = build_mlp(128, 10, (28, 28, 1))
    assert model.input_shape == (None, 28, 28, 1) and model.output_shape == (None, 10)
    assert [type(layer).__name__ for layer in model.layers] == ["Flatten", "Dense", "Dense"]
    assert model.layers[1].units == 128 and model.layers[1].activation.__name__ == "relu"
    assert model.layers[2].activation.__name__ == "softmax"
    assert model.count_params() == 784 * 128 + 128 + 128 * 10 + 10


def test_cnn_shapes() -> None:
    model = build_cnn(
        filters=[8, 16],
        kernel_size=3,
        hidden_units=32,
        dropout=0.25,
        num_classes=10,
        shape=(28, 28, 1),
    )
    assert model.input_shape == (None, 28, 28, 1) and model.output_shape == (None, 10)
    convs = [layer for layer in model.layers if type(layer).__name__ == "Conv2D"]
    assert [c.filters for c in convs] == [8, 16]


@pytest.mark.parametrize(
    "cfg",
    [
        MLPConfig(name="mlp", hidden_units=16),
        CNNConfig(name="cnn", filters=[4], kernel_size=3, hidden_units=8, dropout=0.0),
    ],
)
def test_build_model_dispatches_on_name(cfg) -> None:
    model = build_model(cfg, 10, (28, 28, 1))
    assert model.name == cfg.name and model.output_shape == (None, 10)
    probs = model.predict(np.zeros((2, 28, 28, 1), np.float32), verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("shape", [(64, 64, 3), (160, 160, 3), (64, 48, 1)])
def test_both_models_train_on_pictures_of_any_size_in_colour_or_grey(
    name: str, shape: tuple[int, int, int]
) -> None:
    cfg = validate(compose([f"model={name}", "train.epochs=1", "train.batch_size=4"]))
    rng = np.random.default_rng(0)
    x = rng.random((10, *shape), dtype=np.float32)
    y = rng.integers(0, 3, 10).astype(np.uint8)
    model = compile_model(build_model(cfg.model, 3, shape), cfg.train)
    assert model.input_shape == (None, *shape) and model.output_shape == (None, 3)
    history, _ = Trainer().fit(model, (x[:8], y[:8]), (x[8:], y[8:]), cfg.train)
    assert np.isfinite(history["loss"][0]) and np.isfinite(history["val_loss"][0])
    probs = model.predict(x[:2], verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def tiny_fit(
    params: dict, n: int, n_train: int, classes: int, shape: tuple[int, int], batch_size: int
) -> tuple:
    """A seed model of 8 hidden units fitted 2 epochs on `n` random images (the first `n_train`
    to train, the rest to validate); returns the model, history, seconds and the images."""
    params["train"].update(epochs=2, batch_size=batch_size)
    cfg = validate(params)
    rng = np.random.default_rng(0)
    x = rng.random((n, *shape), dtype=np.float32)
    y = rng.integers(0, classes, n).astype(np.uint8)
    keras.utils.set_random_seed(cfg.seed)
    model = compile_model(build_mlp(8, classes, shape), cfg.train)
    history, seconds = Trainer().fit(
        model, (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:]), cfg.train
    )
    return model, history, seconds, x


def test_fit_returns_history_and_save_load_round_trip(
    default_params: dict, tmp_path: Path
) -> None:
    model, history, seconds, x = tiny_fit(default_params, 40, 32, 10, (28, 28, 1), batch_size=8)
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds"}
    assert all(len(v) == 2 for v in history.values()) and seconds > 0
    path = tmp_path / "models/model.keras"
    save_model(model, path)
    assert [p.name for p in path.parent.iterdir()] == ["model.keras"]
    np.testing.assert_allclose(load_model(path).predict(x, verbose=0), model.predict(x, verbose=0))


def test_load_model_missing_file(tmp_path: Path) -> None:
    with pytest.raises(
        Exception,
        match=r"model.keras not found \(only .keras files .*\); run `uv run dvc repro train`",
    ):
        load_model(tmp_path / "model.keras")


def test_limit_takes_the_first_examples() -> None:
    x, y = np.arange(10), np.arange(10)
    assert limit((x, y), None)[0] is x
    np.testing.assert_array_equal(limit((x, y), 3)[1], [0, 1, 2])


DETERMINISM_SCRIPT = """
import sys
import numpy as np
from pipeline.core.config import compose, validate
from pipeline.core.model import build_mlp, compile_model, weights_sha256
from pipeline.core.training import Trainer, set_determinism
cfg = validate(compose(["train.epochs=1", "train.batch_size=16"]))
set_determinism(cfg.seed, int(sys.argv[1]), 1)
rng = np.random.default_rng(0)
x, y = rng.random((256, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, 256)
model = compile_model(build_mlp(32, 10, (28, 28, 1)), cfg.train)
Trainer().fit(model, (x[:200], y[:200]), (x[200:], y[200:]), cfg.train)
print(weights_sha256(model))
"""


@pytest.mark.slow
def test_same_seed_and_threads_give_bit_identical_weights() -> None:
    hashes = [
        run(["python", "-c", DETERMINISM_SCRIPT, "2"], ROOT).stdout.split()[-1] for _ in range(2)
    ]
    assert hashes[0] == hashes[1] and len(hashes[0]) == 64


REUSE_SCRIPT = """
import sys
import numpy as np
from pipeline.core.config import compose, validate
from pipeline.core.model import weights_sha256
from pipeline.core.training import Trainer, set_determinism
model = sys.argv[1]
overrides = ["train.batch_size=16", f"model={model}"]
if model == "cnn":
    overrides += ["model.filters=[4]", "model.hidden_units=8", "model.dropout=0.5"]
rng = np.random.default_rng(0)
x, y = rng.random((256, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, 256)
previous, trainer = None, Trainer()
for arg in sys.argv[2:]:
    seed, epochs = arg.split(":")
    cfg = validate(compose(overrides + [f"seed={seed}", f"train.epochs={epochs}"]))
    set_determinism(cfg.seed, 1, 1)
    net = trainer.new_model(cfg.model, cfg.train, 10, (28, 28, 1))
    trainer.fit(net, (x[:200], y[:200]), (x[200:], y[200:]), cfg.train)
    traced = trainer.compiled_steps(net, None, cfg.train)._batches.experimental_get_tracing_count()
    # As in a sweep: the state is detached (the shadow's first building drawing random numbers)
    # before the next seed, and put into the shadow later.
    kept = trainer.detach(net, cfg.model, cfg.train)
    copy = kept.model()
    assert weights_sha256(copy) == weights_sha256(net), "the shadow holds other weights"
    assert int(copy.optimizer.iterations) == int(net.optimizer.iterations) > 0
    assert copy is not net and (previous is None or previous is copy), "one shadow per model"
    previous = copy
    print(id(net), traced, weights_sha256(net))
"""


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_later_seeds_reuse_the_compiled_model_bit_identically(model: str) -> None:
    """A model trained after another of the same settings (other seed, other epoch count)
    reuses its compiled model, and ends with the weights a fresh process gives that seed."""

    def trained(*runs: str) -> list[list[str]]:
        out = run(["python", "-c", REUSE_SCRIPT, model, *runs], ROOT).stdout
        return [line.split() for line in out.splitlines() if len(line.split()) == 3]

    reused = trained("42:1", "43:2", "42:1")
    fresh = [trained(r)[0] for r in ("43:2", "42:1")]
    assert len({obj for obj, _, _ in reused}) == 1  # one model object for all three
    assert [traced for _, traced, _ in reused] == ["1", "1", "1"]  # its epoch loop traced once
    assert reused[1][2] == fresh[0][2]  # seed 43 after seed 42 == seed 43 alone
    assert reused[0][2] == reused[2][2] == fresh[1][2]
    assert reused[0][2] != reused[1][2]


def test_weights_sha256_tracks_every_weight() -> None:
    model = build_mlp(4, 10, (28, 28, 1))
    before = weights_sha256(model)
    weights = model.get_weights()
    weights[-1][0] += 1e-7
    model.set_weights(weights)
    assert weights_sha256(model) != before


def test_keras_still_has_the_private_build_the_training_loop_uses() -> None:
    assert hasattr(keras.Model, "_symbolic_build"), (
        f"keras {keras.__version__} removed Model._symbolic_build, which pipeline.core.training."
        "build_state calls to create loss and metric state before the compiled loop runs; "
        "find its replacement in keras/src/trainers/trainer.py or bound keras below this version "
        "in pyproject.toml"
    )


def test_a_keras_whose_internals_moved_is_refused_by_name() -> None:
    class Moved:  # a model of a Keras without Model._symbolic_build
        pass

    with pytest.raises(
        PipelineError, match=rf"keras {keras.__version__} has no Model._symbolic_build"
    ):
        build_state(Moved(), (None, None))


def separable_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` images whose class is written in them: a bright 5x5 block at a place per class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.uint8)
    x = rng.random((n, 28, 28, 1), dtype=np.float32) * 0.3
    for i, label in enumerate(y):
        x[i, 2 + 2 * label : 7 + 2 * label, 5:10] = 1.0
    return x, y


def test_the_loop_matches_keras_fit_in_steps_and_loss(default_params: dict) -> None:
    """100 examples at batch size 32: three full batches and a last one of 4, for 3 epochs."""
    default_params["train"].update(epochs=3, batch_size=32, jit_compile=False)
    cfg = validate(default_params)
    (x, y), val = separable_digits(100), separable_digits(50, seed=1)
    results = {}
    for how in ("loop", "fit"):
        keras.utils.set_random_seed(cfg.seed)
        model = compile_model(build_mlp(32, 10, (28, 28, 1)), cfg.train)
        if how == "loop":
            history, _ = Trainer().fit(model, (x, y), val, cfg.train)
        else:
            history = model.fit(
                x, y, batch_size=32, epochs=3, validation_data=val, verbose=0
            ).history
        results[how] = (int(model.optimizer.iterations), history)
    (loop_steps, loop), (fit_steps, fitted) = results["loop"], results["fit"]
    assert loop_steps == fit_steps == 3 * 4
    # Each shuffles in its own order, so the losses agree to a tolerance, not to the bit.
    for key in ("loss", "val_loss"):
        assert loop[key][-1] == pytest.approx(fitted[key][-1], abs=0.05), key
    assert loop["loss"][-1] < loop["loss"][0]


def test_cnn_trains_without_xla_where_xla_cannot(
    default_params: dict, capsys: pytest.CaptureFixture
) -> None:
    default_params["model"] = {
        "name": "cnn", "filters": [4], "kernel_size": 3, "hidden_units": 16, "dropout": 0.0
    }  # fmt: skip
    default_params["train"].update(epochs=1, batch_size=32, jit_compile=True)
    cfg = validate(default_params)
    x, y = separable_digits(300)
    tf.config.experimental.enable_op_determinism()  # as set_determinism does for every run
    keras.utils.set_random_seed(cfg.seed)
    model = compile_model(build_model(cfg.model, 10, (28, 28, 1)), cfg.train)
    history, _ = Trainer().fit(model, (x[:250], y[:250]), (x[250:], y[250:]), cfg.train)
    assert "XLA cannot compile this model deterministically" in capsys.readouterr().err
    assert int(model.optimizer.iterations) == 8  # 250 / 32: seven full batches and one of 26
    assert np.isfinite(history["loss"][0]) and len(history["val_accuracy"]) == 1


def test_a_dataset_smaller_than_one_batch_trains_on_what_it_has(default_params: dict) -> None:
    """12 pictures and a batch of 32 (a tiny folder dataset): one smaller batch per epoch, as
    Keras's `fit` does, not XLA's "Expected size[0] in [0, 9], but got 32"."""
    model, history, _, _ = tiny_fit(default_params, 16, 12, 2, (12, 12), batch_size=32)
    assert len(history["loss"]) == 2 and all(np.isfinite(history["loss"]))
    assert int(model.optimizer.iterations) == 2  # one step per epoch, on all 12
