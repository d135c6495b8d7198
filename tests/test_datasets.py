"""Datasets as config files: Fashion-MNIST end to end from its local mirror, and the class names
that reach figures, predict and the web app."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from PIL import Image

from helpers import copy_project, fashion_mirror, run, use_store
from pipeline.core import plots

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

    x, y = (np.load(project / "data/processed/test.npz")[k][:20] for k in ("x", "y"))
    paths = []
    for i, image in enumerate(x):  # dark clothing on white, as a photo would be
        paths.append(tmp_path / f"item{i}.png")
        Image.fromarray(np.round(255 - image * 255).astype(np.uint8)).resize((112, 112)).save(
            paths[-1]
        )
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
    from pipeline.tools.predict import choose_model

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
