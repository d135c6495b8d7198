"""Datasets as config files: Fashion-MNIST end to end from its local mirror, a folder of labelled
pictures (real MNIST digits saved as PNG and JPEG) end to end, bad folders, and the class names
that reach figures, predict and the web app."""

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from PIL import Image

from helpers import copy_project, fashion_mirror, run, run_env, use_store
from pipeline.core import plots
from pipeline.core.config import compose, params_yaml_text, validate
from pipeline.core.errors import ConfigError, DataError
from pipeline.core.folder import scan_folder
from pipeline.core.shards import Shards

FASHION = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


def texts(fig, ticks: bool = False) -> list[str]:
    """The captions of a figure's images, and with `ticks` its x tick labels."""
    shown = [t for ax in fig.axes for t in [*ax.texts, *(ax.get_xticklabels() if ticks else [])]]
    return [t.get_text() for t in shown]


def test_figures_label_classes_by_name() -> None:
    rng = np.random.default_rng(0)
    images = rng.random((4, 28, 28)).astype(np.float32)
    y_true, y_pred = np.array([0, 9, 5, 1]), np.array([0, 7, 5, 1])
    grid = texts(plots.prediction_grid(images, y_true, y_pred, classes=FASHION))
    assert "T-shirt/top\n(T-shirt/top)" in grid and "Sneaker\n(Ankle boot)" in grid
    wrong = texts(plots.misclassified_gallery(images, y_true, y_pred, np.ones(4), classes=FASHION))
    assert wrong == ["Sneaker\n(Ankle boot) 1.00"]
    cm = texts(plots.confusion_heatmap(np.eye(10, dtype=int), FASHION), ticks=True)
    assert set(FASHION) <= set(cm)
    digits = texts(plots.prediction_grid(images, y_true, y_pred, classes=list("0123456789")))
    assert "7 (9)" in digits  # MNIST's captions as before


@pytest.mark.slow
def test_fashion_mnist_end_to_end_registers_its_own_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = copy_project(tmp_path / "project")
    mirror = fashion_mirror()
    env = {"DATA_MIRROR": mirror} if mirror else {}
    run(
        ["dvc", "exp", "run", "-S", "data=fashion_mnist", "-S", "train.epochs=2",
         "-S", "train.max_examples=10000"],
        project, **env,
    )  # fmt: skip
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["data"]["name"] == "fashion_mnist" and params["data"]["classes"] == FASHION
    assert params["tracking"]["registered_model"] == "fashion-mnist"
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert 0.75 < metrics["test_accuracy"] < 0.95  # clothing: harder than digits

    store = f"sqlite:///{project}/mlflow.db"
    use_store(store)
    client = mlflow.MlflowClient()
    assert [m.name for m in client.search_registered_models()] == ["fashion-mnist"]
    champion = client.get_model_version_by_alias("fashion-mnist", "champion")
    run_ = client.get_run(champion.run_id)
    assert json.loads(run_.data.tags["classes"]) == FASHION
    assert client.get_experiment(run_.info.experiment_id).name == "fashion_mnist"
    assert run_.info.run_name.startswith("fashion_mnist-mlp-h128-e2")
    inputs = {d.dataset.name for d in run_.inputs.dataset_inputs}
    assert inputs == {"fashion_mnist-train", "fashion_mnist-val", "fashion_mnist-test"}

    test = Shards(project / "data/processed", "test")
    x, y = test.take(range(20)), test.labels()[:20]
    paths = []
    for i, image in enumerate(x):  # dark clothing on white, as a photo would be
        paths.append(tmp_path / f"item{i}.png")
        Image.fromarray(255 - image[..., 0]).resize((112, 112)).save(paths[-1])
    for source in (
        [],
        ["--model-uri", "models:/fashion-mnist@champion"],
    ):
        out = run(
            ["python", "-m", "pipeline.predict", "--json", *source, *map(str, paths)],
            project, MLFLOW_TRACKING_URI=store,
        ).stdout  # fmt: skip
        answers = [json.loads(line) for line in out.splitlines()]
        assert all(a["class"] == FASHION[a["digit"]] for a in answers)
        right = np.mean([a["digit"] == label for a, label in zip(answers, y, strict=True)])
        assert right >= 0.7, right

    # The app on the champion speaks of clothing, offers the upload, answers with class names.
    from fastapi.testclient import TestClient

    from pipeline.app.server import create_app
    from pipeline.tracking.choose import choose_model

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.chdir(project)  # its params.yaml names the dataset, hence the registered model
    with TestClient(create_app(choose_model(champion=True), store)) as client:
        page = client.get("/").text
        assert "FASHION-MNIST: pictures of clothing" in page and "Open or drop a picture." in page
        assert "Draw a digit" not in page and "Undo" not in page
        answer = client.post(
            "/api/predict", files={"image": ("item.png", paths[0].read_bytes(), "image/png")}
        ).json()
        assert answer["classes"] == FASHION and answer["class"] == FASHION[answer["digit"]]


# ---- a folder of labelled pictures -------------------------------------------------------

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def folder_config(path: Path | str, *overrides: str):
    return validate(compose(["data=folder", f"data.path={path}", *overrides]))


def pictures(root: Path, counts: dict[str, int], size: int = 28) -> Path:
    """Class subfolders of small gray PNG pictures, `counts` per class."""
    rng = np.random.default_rng(1)
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (size, size), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def bad_folder(tmp_path: Path, case: str) -> Path:
    if case == "missing":
        return tmp_path / "absent"
    if case == "a-file":
        (tmp_path / "file.png").write_bytes(b"x")
        return tmp_path / "file.png"
    (tmp_path / "pics" / ".git").mkdir(parents=True)  # hidden: not a class
    return pictures(tmp_path / "pics", {"cats": 5} if case == "one-class" else {})


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("missing", "does not exist"),
        ("a-file", "is not a folder"),
        ("empty", "has no class subfolders"),
        ("one-class", "has only the class subfolder 'cats'; a classifier needs at least 2"),
    ],
)
def test_a_bad_folder_is_refused_when_the_config_is_read(
    case: str, says: str, tmp_path: Path
) -> None:
    path = bad_folder(tmp_path, case)
    with pytest.raises(ConfigError) as err:
        folder_config(path)
    assert f"data.path {path} {says}" in str(err.value), err.value


def test_a_folder_path_must_be_absolute_and_classes_must_match(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.path must be an absolute path, received 'pics'"):
        folder_config("pics")
    with pytest.raises(
        ConfigError, match="data.path must be set for a dataset of format 'folder'"
    ):
        validate(compose(["data=folder"]))
    root = pictures(tmp_path / "pics", {"cats": 5, "dogs": 5})
    with pytest.raises(ConfigError, match=r"data.classes \['cats', 'birds'\] are not the sub"):
        folder_config(root, "data.classes=[cats,birds]")
    assert folder_config(root, "data.classes=[dogs,cats]").data.class_names == ["dogs", "cats"]
    assert folder_config(root).data.class_names == ["cats", "dogs"]


def test_a_file_that_is_not_a_picture_or_too_few_pictures_are_named(tmp_path: Path) -> None:
    root = pictures(tmp_path / "pics", {"cats": 5, "dogs": 5})
    (root / "dogs" / "notes.txt").write_text("good dogs")
    with pytest.raises(DataError) as err:
        scan_folder(folder_config(root).data)
    assert f"data.path {root}: dogs/notes.txt is not a picture" in str(err.value), err.value
    assert "data.on_bad_picture=skip" in str(err.value)
    skipped = scan_folder(folder_config(root, "data.on_bad_picture=skip").data)
    why = "not a PNG or JPEG picture"
    assert skipped["skipped"] == [{"file": "dogs/notes.txt", "reason": why}]
    assert skipped["pictures"] == 10 and "dogs/notes.txt" not in skipped["files"]
    (root / "dogs" / "notes.txt").unlink()
    (root / "cats" / "4.png").unlink()
    (root / "cats" / "3.png").unlink()
    (root / "cats" / "2.png").unlink()
    with pytest.raises(DataError) as err:
        scan_folder(folder_config(root).data)
    assert f"data.path {root}: class 'cats' has 2 picture(s)" in str(err.value)
    assert "needs at least 3" in str(err.value), err.value


def test_the_manifest_has_every_picture_and_a_digest_of_the_folder(tmp_path: Path) -> None:
    root = pictures(tmp_path / "pics", {"cats": 3, "dogs": 3}, size=28)
    pictures(root, {"dogs": 1}, size=300)  # dogs/0.png again, larger
    Image.new("RGB", (40, 90), "white").save(root / "cats" / "wide.jpg")
    (root / ".DS_Store").write_bytes(b"hidden")
    (root / "cats" / ".hidden.png").write_bytes(b"hidden")
    manifest = scan_folder(folder_config(root).data)
    assert manifest["classes"] == ["cats", "dogs"] and manifest["pictures"] == 7
    assert sorted(manifest["files"]) == [
        "cats/0.png", "cats/1.png", "cats/2.png", "cats/wide.jpg",
        "dogs/0.png", "dogs/1.png", "dogs/2.png",
    ]  # fmt: skip
    wide = (root / "cats" / "wide.jpg").read_bytes()
    assert manifest["files"]["cats/wide.jpg"] == hashlib.sha256(wide).hexdigest()
    # A white RGB picture is in an RGB file: rgb is chosen, as a mode says, with the count.
    assert manifest["color"] == "rgb" and manifest["colour_pictures"] == 1
    assert scan_folder(folder_config(root, "data.color=grayscale").data)["color"] == "grayscale"
    (root / "cats" / "wide.jpg").unlink()
    assert scan_folder(folder_config(root).data)["color"] == "grayscale"
    first = scan_folder(folder_config(root).data)["sha256"]
    Image.new("L", (28, 28), 7).save(root / "cats" / "0.png")
    assert scan_folder(folder_config(root).data)["sha256"] != first


def test_image_size_reaches_the_model_and_predict(tmp_path: Path) -> None:
    from pipeline.core.model import build_model
    from pipeline.tracking.choose import Chosen

    root = pictures(tmp_path / "pics", {"cats": 3, "dogs": 3}, size=50)
    cfg = folder_config(root, "data.image_size=[32,20]", "model=cnn")
    photo = tmp_path / "photo.png"
    pixels = np.full((50, 70), 200, np.uint8)
    pixels[10:40, 20:50] = 30
    Image.fromarray(pixels).save(photo)
    for channels in (1, 3):
        net = build_model(cfg.model, 2, (32, 20, channels))
        assert net.input_shape == (None, 32, 20, channels)
        for about in ({"format": "folder"}, {"handwriting": True}, {"handwriting": False}):
            if channels == 3 and "handwriting" in about:
                continue  # an IDX dataset's models are grayscale
            seen = Chosen(net, about).read(photo, "photo.png")
            assert seen.shape == (32, 20, channels), about
            assert 0 <= seen.min() < seen.max() <= 1, about
    with pytest.raises(ConfigError, match=r"data.image_size must be \[height, width\]"):
        folder_config(root, "data.image_size=[28]")


def test_fetch_stops_on_a_bad_picture_before_anything_is_written(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    root = pictures(tmp_path / "pics", {"cats": 5, "dogs": 5})
    (root / "cats" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (project / "params.yaml").write_text(params_yaml_text(["data=folder", f"data.path={root}"]))
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "repro"], cwd=project, env=run_env(),
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode != 0
    assert f"data.path {root}: cats/broken.jpg is not a picture" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (project / "data/raw/folder.json").exists()
    assert not (project / "data/processed").exists() and not (project / "mlflow.db").exists()

    # Without data.path, DVC gets as far as the stage, which says what is missing.
    run(["git", "checkout", "-q", "params.yaml"], project)
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "run", "-S", "data=folder"], cwd=project,
        env=run_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "data.path must be set for a dataset of format 'folder'" in proc.stderr, proc.stderr
    assert not (project / "mlflow.db").exists()


@pytest.mark.slow
def test_a_folder_of_real_digits_runs_end_to_end(mnist: dict, tmp_path: Path) -> None:
    """500 MNIST test digits saved as pictures in class subfolders named by word (so the labels
    are the sorted names, not the digits); every fifth one a larger JPEG."""
    root = tmp_path / "digits"
    for i, (image, digit) in enumerate(zip(mnist["xt"][:500], mnist["yt"][:500], strict=True)):
        folder = root / WORDS[digit]
        folder.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(np.round(image * 255).astype(np.uint8))
        if i % 5:
            picture.save(folder / f"{i}.png")
        else:
            picture.resize((84, 84), Image.Resampling.BILINEAR).save(
                folder / f"{i}.jpg", quality=95
            )
    project = copy_project(tmp_path / "project")
    proc = run(["dvc", "exp", "run", "-S", "data=folder", "-S", f"data.path={root}"], project)
    classes = sorted(WORDS)
    assert "500 pictures in 10 classes" in proc.stdout, proc.stdout

    counts = json.loads((project / "reports/data.json").read_text())
    per_class = np.bincount(mnist["yt"][:500], minlength=10)
    assert counts["test"]["examples"] == sum(round(n * 0.2) for n in per_class)
    sizes = [counts[s]["examples"] for s in ("train", "val", "test")]
    assert sum(sizes) == 500 and min(sizes) > 0
    test_accuracy = json.loads((project / "reports/metrics.json").read_text())["test_accuracy"]
    assert test_accuracy > 0.6, test_accuracy  # 10 classes: chance is 0.1

    store = f"sqlite:///{project}/mlflow.db"
    use_store(store)
    client = mlflow.MlflowClient()
    assert [m.name for m in client.search_registered_models()] == ["folder-images"]
    champion = client.get_model_version_by_alias("folder-images", "champion")
    tags = client.get_run(champion.run_id).data.tags
    assert json.loads(tags["classes"]) == classes and tags["dataset"] == "folder"
    folder_json = (project / "data/raw/folder.json").read_bytes()
    assert tags["data.raw.source.sha256"] == hashlib.sha256(folder_json).hexdigest()
    assert json.loads(folder_json)["path"] == str(root)

    x = Shards(project / "data/processed", "test").take(range(5))
    paths = []
    for i, image in enumerate(x):
        paths.append(tmp_path / f"digit{i}.png")
        Image.fromarray(image[..., 0]).save(paths[-1])
    out = run(
        ["python", "-m", "pipeline.predict", "--json", *map(str, paths)],
        project, MLFLOW_TRACKING_URI=store,
    ).stdout  # fmt: skip
    answers = [json.loads(line) for line in out.splitlines()]
    assert all(a["class"] == classes[a["digit"]] for a in answers), answers

    # DVC sees a changed folder: one more picture makes the fetch stage stale.
    assert "up to date" in run(["dvc", "status"], project).stdout
    Image.new("L", (28, 28), 0).save(root / "zero" / "extra.png")
    status = run(["dvc", "status"], project).stdout
    assert f"fetch@{root}" in status and "modified" in status, status


@pytest.mark.slow
def test_a_folder_of_twelve_pictures_trains_and_is_warned_about(
    mnist: dict, tmp_path: Path
) -> None:
    """Six real zeros and six real ones: fewer pictures than one batch of 32 get through every
    stage (each epoch one smaller batch, as Keras's `fit` trains), and preprocess warns, naming
    the counts."""
    root = tmp_path / "tiny"
    for digit in (0, 1):
        (root / WORDS[digit]).mkdir(parents=True)
        images = mnist["xt"][mnist["yt"] == digit][:6]
        for i, image in enumerate(images):
            picture = Image.fromarray(np.round(image * 255).astype(np.uint8))
            picture.save(root / WORDS[digit] / f"{i}.png")
    project = copy_project(tmp_path / "project")
    proc = run(["dvc", "exp", "run", "-S", "data=folder", "-S", f"data.path={root}"], project)
    assert "12 pictures in 2 classes" in proc.stdout, proc.stdout
    counts = json.loads((project / "reports/data.json").read_text())
    train = counts["train"]["per_class"]
    assert sum(counts[s]["examples"] for s in ("train", "val", "test")) == 12
    warning = next(line for line in proc.stderr.splitlines() if "too few pictures" in line)
    assert f"one {train['0']}, zero {train['1']}" in warning, warning
    assert "2 of 2 classes have fewer than 10 training pictures" in warning, warning
    history = (project / "reports/history.csv").read_text().splitlines()
    assert len(history) == 1 + 5 and "nan" not in "".join(history)  # the default 5 epochs
    metrics = json.loads((project / "reports/metrics.json").read_text())
    with (project / "reports/predictions.csv").open() as fh:
        predicted = list(csv.DictReader(fh))
    assert len(predicted) == counts["test"]["examples"]  # every test picture, evaluated
    right = sum(row["actual"] == row["predicted"] for row in predicted)
    assert metrics["test_accuracy"] == pytest.approx(right / len(predicted))
    assert "Traceback" not in proc.stderr
