"""The NumPy reading of saved models gives Keras's answers, refuses what it cannot run to Keras,
and lets predict read pictures without importing TensorFlow."""

import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from helpers import ROOT, render, run_env
from pipeline.core import numpy_model
from pipeline.core.errors import PipelineError
from pipeline.core.model import build_cnn, build_mlp, save_model


def keras_and_numpy(model: keras.Model, x: np.ndarray, path: Path) -> tuple:
    save_model(model, path)
    loaded = numpy_model.load(path)
    assert loaded is not None
    assert loaded.input_shape == model.input_shape and loaded.output_shape == model.output_shape
    return model.predict(x, verbose=0), loaded.predict_on_batch(x)


@pytest.mark.parametrize(
    ("build", "shape"),
    [
        (lambda shape: build_mlp(16, 3, shape), (28, 28, 1)),
        (lambda shape: build_mlp(16, 3, shape), (20, 24, 3)),
        (lambda shape: build_cnn([4, 8], 3, 16, 0.5, 10, shape), (28, 28, 1)),
        (lambda shape: build_cnn([3], 5, 8, 0.0, 4, shape), (31, 22, 3)),  # odd sizes, colour
    ],
    ids=["mlp", "mlp-colour", "cnn", "cnn-odd-size-colour"],
)
def test_numpy_answers_as_keras(build, shape: tuple[int, int], tmp_path: Path) -> None:
    keras.utils.set_random_seed(3)
    x = np.random.default_rng(0).random((64, *shape), dtype=np.float32)
    want, got = keras_and_numpy(build(shape), x, tmp_path / "m.keras")
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert (got.argmax(1) == want.argmax(1)).all()


def test_a_model_with_another_layer_is_left_to_keras(tmp_path: Path) -> None:
    model = keras.Sequential(
        [keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.BatchNormalization(),
         keras.layers.Dense(10, activation="softmax")]
    )  # fmt: skip
    save_model(model, tmp_path / "m.keras")
    assert numpy_model.load(tmp_path / "m.keras") is None
    loaded = numpy_model.load_predictor(tmp_path / "m.keras")
    assert isinstance(loaded, keras.Model)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path: Path) -> None:
    import io

    import h5py

    path = tmp_path / "m.keras"
    save_model(build_mlp(4, 10, (28, 28)), path)
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    buffer = io.BytesIO(files["model.weights.h5"])
    with h5py.File(buffer, "r+") as weights:
        del weights["layers/dense/vars/1"]
        weights["layers/dense/vars/1"] = np.zeros(1, np.float32)  # would broadcast over 4
    files["model.weights.h5"] = buffer.getvalue()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    with pytest.raises(PipelineError, match=r"Dense dense\w*: weights \(784, 4\), bias \(1,\)"):
        numpy_model.load(path)


def test_a_changed_or_broken_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.keras"
    save_model(build_mlp(4, 10, (28, 28)), path)
    with pytest.raises(PipelineError, match="has SHA-256"):
        numpy_model.load(path, sha256="0" * 64)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("extra.py", "print('hi')")
    assert numpy_model.load(path) is None  # not a file the project saved: Keras's safe mode
    path.write_bytes(b"not a zip")
    with pytest.raises(PipelineError, match="not a .keras model file"):
        numpy_model.load(path)


@pytest.mark.slow
def test_real_digits_get_keras_labels_and_predict_loads_no_tensorflow(
    mnist: dict, model_file: Path, tmp_path: Path
) -> None:
    """The model trained on real MNIST: all 10,000 test digits get Keras's labels; the predict
    command's path (choose a model, read a picture) never imports TensorFlow."""
    want = keras.models.load_model(model_file).predict(mnist["xt"], verbose=0)
    got = numpy_model.load(model_file).predict_on_batch(mnist["xt"])
    assert (got.argmax(1) == want.argmax(1)).all()
    np.testing.assert_allclose(got, want, atol=1e-5)

    picture = tmp_path / "seven.png"
    render(mnist["xt"][0], 0).save(picture)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from pipeline.tracking.choose import choose_model, read_digit\n"
        f"chosen = choose_model(Path({str(model_file)!r}))\n"
        f"x = read_digit(Path({str(picture)!r}), 'seven.png', chosen)\n"
        "print(int(chosen.predict(x[None]).argmax()), 'tensorflow' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=run_env(),
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(mnist["yt"][0]), "False"]
