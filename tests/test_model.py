from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import ROOT, run
from pipeline.config import CNNConfig, MLPConfig, validate
from pipeline.model import (
    build_cnn,
    build_mlp,
    build_model,
    compile_model,
    fit,
    limit,
    load_model,
    save_model,
    weights_sha256,
)


def test_mlp_is_the_seed_model() -> None:
    model = build_mlp(128)
    assert model.input_shape == (None, 28, 28) and model.output_shape == (None, 10)
    assert [type(layer).__name__ for layer in model.layers] == ["Flatten", "Dense", "Dense"]
    assert model.layers[1].units == 128 and model.layers[1].activation.__name__ == "relu"
    assert model.layers[2].activation.__name__ == "softmax"
    assert model.count_params() == 784 * 128 + 128 + 128 * 10 + 10


def test_cnn_shapes() -> None:
    model = build_cnn(filters=[8, 16], kernel_size=3, hidden_units=32, dropout=0.25)
    assert model.input_shape == (None, 28, 28) and model.output_shape == (None, 10)
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
    model = build_model(cfg)
    assert model.name == cfg.name and model.output_shape == (None, 10)
    probs = model.predict(np.zeros((2, 28, 28), np.float32), verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_fit_returns_history_and_save_load_round_trip(
    default_params: dict, tmp_path: Path
) -> None:
    default_params["train"].update(epochs=2, batch_size=8)
    cfg = validate(default_params)
    rng = np.random.default_rng(0)
    x = rng.random((40, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 40).astype(np.uint8)
    keras.utils.set_random_seed(cfg.seed)
    model = compile_model(build_mlp(8), cfg.train)
    history, seconds = fit(model, (x[:32], y[:32]), (x[32:], y[32:]), cfg.train)
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
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
from pipeline.config import compose, validate
from pipeline.model import build_mlp, compile_model, fit, set_determinism, weights_sha256
cfg = validate(compose(["train.epochs=1", "train.batch_size=16"]))
set_determinism(cfg.seed, int(sys.argv[1]), 1)
rng = np.random.default_rng(0)
x, y = rng.random((256, 28, 28), dtype=np.float32), rng.integers(0, 10, 256)
model = compile_model(build_mlp(32), cfg.train)
fit(model, (x[:200], y[:200]), (x[200:], y[200:]), cfg.train)
print(weights_sha256(model))
"""


def test_same_seed_and_threads_give_bit_identical_weights() -> None:
    hashes = [
        run(["python", "-c", DETERMINISM_SCRIPT, "2"], ROOT).stdout.split()[-1] for _ in range(2)
    ]
    assert hashes[0] == hashes[1] and len(hashes[0]) == 64


def test_weights_sha256_tracks_every_weight() -> None:
    model = build_mlp(4)
    before = weights_sha256(model)
    weights = model.get_weights()
    weights[-1][0] += 1e-7
    model.set_weights(weights)
    assert weights_sha256(model) != before
