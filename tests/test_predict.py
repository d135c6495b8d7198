"""Predict on real images, the model registry and the MLflow scoring server, on real MNIST."""

import json
import os
import pickle
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from helpers import ROOT, free_port, render, run, run_env, use_store
from pipeline.core.images import load_image, normalize

N = 100  # test digits rendered as images


def predict(*args: str, check: bool = True, **env: str):
    """`python -m pipeline.predict ARGS` from the project root, as a user runs it."""
    return run(["python", "-m", "pipeline.predict", *args], ROOT, check=check, **env)


def test_rendered_digits_are_read_as_the_originals(
    mnist: dict, model_file: Path, tmp_path: Path
) -> None:
    import keras

    paths = []
    for i in range(N):
        path = tmp_path / f"digit{i}.{'jpg' if i % 3 == 0 else 'png'}"
        render(mnist["xt"][i], i).save(path)
        paths.append(path)
    proc = predict(
        "--model",
        str(model_file),
        "--json",
        "--save-normalized",
        str(tmp_path / "seen"),
        *map(str, paths),
    )
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    assert all(len(r["top3"]) == 3 and r["top3"][0]["digit"] == r["digit"] for r in rows)
    originals = keras.models.load_model(model_file).predict(mnist["xt"][:N], verbose=0)
    agree = np.mean([r["digit"] for r in rows] == originals.argmax(axis=1))
    assert agree >= 0.95, agree
    seen = np.asarray(Image.open(tmp_path / "seen/digit4.png"))
    assert seen.shape == (28, 28) and seen.max() == 255 and seen[0].max() == 0


def drawn_on_transparency(digit: np.ndarray, stroke: tuple[int, int, int]) -> Image.Image:
    """A test digit as a drawing app exports it: strokes of one colour, alpha as the ink."""
    alpha = Image.fromarray(np.round(digit * 255).astype(np.uint8)).resize((280, 280))
    layer = Image.new("RGBA", alpha.size, (*stroke, 0))
    layer.putalpha(alpha)
    return layer


@pytest.mark.parametrize("stroke", [(255, 255, 255), (0, 0, 0), (30, 60, 200)])
def test_transparent_drawings_are_read_by_their_alpha(
    mnist: dict, model_file: Path, tmp_path: Path, stroke: tuple[int, int, int]
) -> None:
    import keras

    n = 20
    paths = []
    for i in range(n):
        paths.append(tmp_path / f"drawn{i}.png")
        drawn_on_transparency(mnist["xt"][i], stroke).save(paths[-1])
    proc = predict("--model", str(model_file), "--json", *map(str, paths))
    digits = [json.loads(line)["digit"] for line in proc.stdout.splitlines()]
    originals = keras.models.load_model(model_file).predict(mnist["xt"][:n], verbose=0)
    assert np.mean(np.array(digits) == originals.argmax(axis=1)) >= 0.9
    seen = normalize(load_image(paths[0]))
    assert seen[0].max() == 0 and seen.max() == pytest.approx(1.0)  # white digit on black


def test_normalize_puts_the_centre_of_mass_in_the_middle() -> None:
    page = np.full((120, 90), 230.0)
    page[10:50, 60:70] = 20.0  # a dark bar near the top right corner
    out = normalize(page)
    ys, xs = np.indices(out.shape)
    assert out.shape == (28, 28) and out.max() == pytest.approx(1.0)
    assert abs((ys * out).sum() / out.sum() - 13.5) <= 0.5
    assert abs((xs * out).sum() / out.sum() - 13.5) <= 0.5
    rows = np.nonzero(out.max(axis=1) > 0.1)[0]
    assert 19 <= rows.max() - rows.min() + 1 <= 21  # the longer side fitted to 20 pixels


def test_bad_files_get_errors_and_the_rest_are_predicted(
    mnist: dict, model_file: Path, tmp_path: Path
) -> None:
    good = tmp_path / "good.png"
    render(mnist["xt"][0], 0).save(good)
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:200])
    blank = tmp_path / "blank.png"
    Image.new("L", (64, 64), 250).save(blank)
    proc = predict(
        "--model",
        str(model_file),
        *map(str, [text, good, cut, blank, tmp_path / "missing.png"]),
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stdout.startswith(f"{good}: 7")
    assert f"error: {text}: not an image" in proc.stderr
    assert f"error: {cut}: unreadable image" in proc.stderr
    assert f"error: {blank}: blank, no digit found" in proc.stderr
    assert "missing.png: no such file" in proc.stderr
    assert "4 of 5 images could not be read" in proc.stderr
    with pytest.raises(Exception, match="blank"):
        normalize(load_image(blank))


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, model_file: Path, mnist: dict):
    """A store where three runs registered the same model as versions of mnist-digits: the
    first became champion, the others, no better on the same examples, were kept out."""
    import keras

    from pipeline.core.config import RegistryConfig
    from pipeline.tracking import models, registry, runs, store

    root = tmp_path_factory.mktemp("registry")
    saved = dict(os.environ)
    os.environ.update(DVC_ROOT=str(root), MLFLOW_TRACKING_URI=f"sqlite:///{root}/mlflow.db")
    try:
        experiment_id = store.setup("serve")
        model = keras.models.load_model(model_file)
        x, y = mnist["xt"][:2000], mnist["yt"][:2000]
        classes = [str(c) for c in range(10)]
        rule = RegistryConfig(promote="significant", alpha=0.05)
        outcomes = []
        for _ in range(3):
            with runs.tracked_run(experiment_id) as run_id:
                uri = runs.log_keras_model(run_id, model, mnist["xt"][:5])
                runs.set_tags(run_id, {"classes": json.dumps(classes)})
                examples = registry.Examples(
                    y,
                    registry.examples_sha256(x, y),
                    models.predicted_labels(uri, x, classes),
                    lambda uri: models.predicted_labels(uri, x, classes),
                    registry.example_keys(x),
                    registry.example_keys(mnist["x"][:1000]),  # none of the test digits
                )
                outcomes.append(registry.register(run_id, uri, "mnist-digits", rule, examples))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return root, outcomes


def test_the_same_model_again_does_not_displace_the_champion(registry) -> None:
    root, outcomes = registry
    assert outcomes == [("1", True), ("2", False), ("3", False)]
    use_store(f"sqlite:///{root}/mlflow.db")
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias("mnist-digits", "champion")
    assert str(champion.version) == "1"
    tags = mlflow.get_run(champion.run_id).data.tags
    assert tags["champion"] == "true" and tags["registered_version"] == "mnist-digits/1"
    assert champion.tags["promotion.decision"] == "first champion"
    second = client.get_model_version("mnist-digits", "2").tags
    assert second["promotion.decision"] == "kept champion v1"
    assert second["promotion.p_value"] == "1" and second["promotion.only_this_right"] == "0"
    assert second["promotion.accuracy"] == second["promotion.champion_accuracy"]
    assert (
        second["promotion.examples"]
        == "2000 validation examples (0 the champion trained on left out)"
    )
    assert float(second["promotion.accuracy"]) > 0.9


@pytest.fixture
def server(registry) -> Iterator[str]:
    root, _ = registry
    port = free_port()
    env = run_env(MLFLOW_TRACKING_URI=f"sqlite:///{root}/mlflow.db")
    proc = subprocess.Popen(
        [
            "mlflow",
            "models",
            "serve",
            "-m",
            "models:/mnist-digits@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(1)
        else:
            raise AssertionError("the scoring server did not start in 180 s")
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_scoring_server_answers_like_the_model(server: str, mnist: dict, model_file) -> None:
    import keras

    batch = mnist["xt"][:32]
    request = urllib.request.Request(
        f"{server}/invocations",
        data=json.dumps({"inputs": batch.tolist()}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.load(response)
    probs = np.asarray(answer["predictions"])
    assert probs.shape == (32, 10)
    local = keras.models.load_model(model_file).predict(batch, verbose=0)
    np.testing.assert_allclose(probs, local, atol=1e-5)
    assert (probs.argmax(axis=1) == mnist["yt"][:32]).mean() >= 0.9


def test_predict_from_the_registry(registry, tmp_path: Path, mnist: dict) -> None:
    root, _ = registry
    image = tmp_path / "seven.png"
    render(mnist["xt"][0], 0).save(image)
    proc = predict(
        "--model-uri",
        "models:/mnist-digits@champion",
        "--json",
        str(image),
        MLFLOW_TRACKING_URI=f"sqlite:///{root}/mlflow.db",
    )
    assert json.loads(proc.stdout)["digit"] == 7


@pytest.mark.slow
def test_quiet_by_default_and_verbose_on_request(
    mnist: dict, model_file: Path, tmp_path: Path
) -> None:
    """Quiet, also where TensorFlow loads (a model with a layer NumPy does not run, here batch
    normalisation, goes to Keras); its chatter comes back with PIPELINE_VERBOSE=1."""
    import keras

    image = tmp_path / "seven.png"
    render(mnist["xt"][0], 0).save(image)
    noise = re.compile(r"^[IWEF]\d{4} |absl::|━", re.M)
    quiet = predict("--model", str(model_file), str(image))
    assert quiet.stdout.startswith(f"{image}: 7") and not noise.findall(quiet.stderr)
    normalised = keras.Sequential(
        [keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.BatchNormalization(),
         keras.layers.Dense(10, activation="softmax")]
    )  # fmt: skip
    normalised.save(tmp_path / "normalised.keras")
    keras_model = ("--model", str(tmp_path / "normalised.keras"), str(image))
    quiet = predict(*keras_model)
    assert quiet.stdout.startswith(f"{image}: ") and not noise.findall(quiet.stderr)
    loud = predict(*keras_model, PIPELINE_VERBOSE="1")
    assert loud.stdout.startswith(f"{image}: ") and len(noise.findall(loud.stderr)) >= 2


class Payload:
    """Unpickled, it creates `marker`: stands for any code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(store_uri: str, folder: Path, digest: str) -> str:
    """Register `folder` as a new version of mnist-digits from a run that records `digest`,
    and give it the champion alias, as anyone who can write to the store could."""
    use_store(store_uri)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("serve").experiment_id
    run_id = client.create_run(experiment).info.run_id
    client.set_tag(run_id, "logged_model_sha256", digest)
    logged = mlflow.initialize_logged_model(
        name="model", source_run_id=run_id, experiment_id=experiment
    )
    client.log_model_artifacts(logged.model_id, str(folder))
    mlflow.finalize_logged_model(logged.model_id, "READY")
    client.set_terminated(run_id)
    version = client.create_model_version(
        "mnist-digits", logged.artifact_location, run_id=run_id, model_id=logged.model_id
    )
    client.set_registered_model_alias("mnist-digits", "champion", version.version)
    return str(version.version)


def test_a_planted_champion_never_runs_its_code(
    registry, tmp_path: Path, mnist: dict, model_file: Path
) -> None:
    import shutil

    from pipeline.core.data import sha256_file
    from pipeline.core.errors import PipelineError
    from pipeline.tracking.models import load_logged

    root, _ = registry
    shutil.copy(root / "mlflow.db", tmp_path / "mlflow.db")
    store_uri = f"sqlite:///{tmp_path}/mlflow.db"
    use_store(store_uri)
    champion = mlflow.MlflowClient().get_model_version_by_alias("mnist-digits", "champion")
    honest = Path(mlflow.artifacts.download_artifacts(champion.source, dst_path=tmp_path / "h"))
    digest = sha256_file(honest / "data/model.keras")
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil"
    shutil.copytree(honest, evil)
    (evil / "data/custom_objects.cloudpickle").write_bytes(pickle.dumps(Payload(marker)))
    version = plant(store_uri, evil, digest)
    image = tmp_path / "seven.png"
    render(mnist["xt"][0], 0).save(image)

    # The plant is real: MLflow's own loader runs the payload.
    loaded = run(
        ["python", "-c", "import mlflow.tensorflow as t; t.load_model('models:/mnist-digits/"
         f"{version}')"],
        tmp_path, check=False, MLFLOW_TRACKING_URI=store_uri,
    )  # fmt: skip
    assert marker.exists(), loaded.stderr
    marker.unlink()

    proc = predict("--json", str(image), "--model-uri", "models:/mnist-digits@champion",
                   check=False, MLFLOW_TRACKING_URI=store_uri)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"refused version {version} of mnist-digits (alias champion)" in proc.stderr
    assert "data/custom_objects.cloudpickle" in proc.stderr and not proc.stdout
    port = free_port()
    app = run(["python", "-m", "pipeline.app", "--port", str(port)], ROOT, check=False,
              MLFLOW_TRACKING_URI=store_uri)  # fmt: skip
    assert app.returncode == 1 and "Traceback" not in app.stderr, app.stderr
    assert f"refused version {version} of mnist-digits" in app.stderr
    assert not marker.exists()

    # An h5 file or a SavedModel is refused the same way; so is a .keras file not the run's.
    for extra in ("data/model.h5", "data/saved_model.pb"):
        other = tmp_path / extra.replace("/", "-")
        shutil.copytree(honest, other)
        (other / extra).write_bytes(b"anything")
        number = plant(store_uri, other, digest)
        with pytest.raises(PipelineError, match=f"version {number} .* holds {extra}"):
            load_logged(f"models:/mnist-digits/{number}")
    swapped = tmp_path / "swapped"
    shutil.copytree(honest, swapped)
    shutil.copy(model_file, swapped / "data/model.keras")
    number = plant(store_uri, swapped, digest)
    with pytest.raises(PipelineError, match=f"version {number} .* but {digest} was recorded"):
        load_logged(f"models:/mnist-digits/{number}")
    model, about = load_logged(f"models:/mnist-digits/{champion.version}")
    assert about["version"] == str(champion.version) and model.count_params() > 0
