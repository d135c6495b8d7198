"""End to end on real MNIST: `dvc repro` of the default pipeline in a fresh copy of the project.

The data come from MNIST_MIRROR when it is set, else from the public mirrors; never skipped.
"""

import json
import re
from pathlib import Path

import mlflow
import numpy as np
import pytest

from helpers import copy_project, run, runs_in, use_store

pytestmark = pytest.mark.slow  # real `dvc repro` and `dvc exp run` on MNIST

# fetch is named after what it reads (dvc.yaml): MNIST's config file.
STAGES = ("fetch@conf/data/mnist.yaml", "preprocess", "train", "evaluate")
FIGURES = ["confusion_matrix.png", "learning_curves.png", "misclassified.png", "predictions.png"]


def dvc(project: Path, *args: str, check: bool = True):
    """Run DVC in `project`; MNIST_MIRROR, when set, passes through to the fetch stage."""
    return run(["dvc", *args], project, check=check)


def runs(project: Path) -> list:
    return runs_in(f"sqlite:///{project}/mlflow.db", "mnist")


def find_exp(node: object, name: str) -> dict | None:
    """The entry named `name` anywhere in `dvc exp show --json` output."""
    if isinstance(node, dict):
        if node.get("name") == name:
            return node
        node = list(node.values())
    if isinstance(node, list):
        for item in node:
            if (found := find_exp(item, name)) is not None:
                return found
    return None


@pytest.fixture(scope="module")
def repro(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A fresh copy after `dvc repro`, the id of the one run that made, and what it printed."""
    root = copy_project(tmp_path_factory.mktemp("e2e"))
    proc = dvc(root, "repro")
    for stage in STAGES:
        assert f"Running stage '{stage}'" in proc.stdout
    (made,) = runs(root)
    return root, made.info.run_id, proc.stdout + proc.stderr


# What TensorFlow's C++ core, absl, Keras's progress bars and MLflow's INFO logging print.
NOISE = re.compile(r"^[IWEF]\d{4} |absl::|━|INFO mlflow|Failed to resolve installed pip", re.M)


@pytest.fixture
def project(repro: tuple[Path, str, str]) -> Path:
    return repro[0]


@pytest.fixture
def default_run(repro: tuple[Path, str, str]):
    use_store(f"sqlite:///{repro[0]}/mlflow.db")
    return mlflow.get_run(repro[1])


def test_the_console_shows_stage_and_epoch_lines_only(repro: tuple[Path, str, str]) -> None:
    printed = repro[2]
    assert not NOISE.findall(printed), NOISE.findall(printed)[:5]
    lines = [line for line in printed.splitlines() if line.strip()]
    epochs = [line for line in lines if line.startswith("Epoch ")]
    assert len(epochs) == 5
    own = [line for line in lines if line.startswith(("fetch: ", "preprocess: ", "train: "))]
    assert len(own) == 4 + 3 + 1 and any(line.startswith("evaluate: ") for line in lines)
    # DVC's own lines (stages, lock file, hints) and ours: nothing else.
    assert len(lines) <= 40, "\n".join(lines)


def test_default_pipeline_reaches_97_percent(project: Path) -> None:
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.97
    assert 0 < metrics["test_loss"] < 0.15
    assert metrics["macro_f1"] >= 0.97
    assert set(metrics["per_class"]) == {str(c) for c in range(10)}
    assert sum(c["support"] for c in metrics["per_class"].values()) == 10_000
    data = json.loads((project / "reports/data.json").read_text())
    assert {s: d["examples"] for s, d in data.items()} == {
        "train": 54_000,
        "val": 6_000,
        "test": 10_000,
    }
    history = (project / "reports/history.csv").read_text().splitlines()
    assert history[0] == "epoch,loss,accuracy,val_loss,val_accuracy,epoch_seconds"
    assert len(history) == 6
    assert sorted(p.name for p in (project / "reports/figures").iterdir()) == FIGURES
    predictions = (project / "reports/predictions.csv").read_text().splitlines()
    assert predictions[0] == "actual,predicted" and len(predictions) == 10_001


def test_one_mlflow_run_holds_everything(project: Path, default_run) -> None:
    run_ = default_run
    assert run_.info.status == "FINISHED" and run_.info.run_name == "mlp-h128-e5"
    client = mlflow.MlflowClient()
    history = client.get_metric_history(run_.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [1, 2, 3, 4, 5]
    assert len(client.get_metric_history(run_.info.run_id, "loss")) == 5
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert run_.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert run_.data.metrics["train_seconds"] > 0
    params = run_.data.params
    assert params["model.hidden_units"] == "128" and params["train.epochs"] == "5"
    assert params["train.batch_size"] == "32" and params["model.name"] == "mlp"
    head = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert run_.data.tags["git_commit"] == head and run_.data.tags["git_dirty"] == "false"
    # MLflow's own source tags: the UI's Source, Version and User columns.
    assert run_.data.tags["mlflow.source.git.commit"] == head
    assert run_.data.tags["mlflow.source.name"] == "pipeline/train.py"
    assert run_.data.tags["mlflow.source.type"] == "LOCAL" and run_.data.tags["mlflow.user"]
    assert len(run_.data.tags["data.processed.train.sha256"]) == 64
    assert run_.data.tags["weights_sha256"] and run_.data.tags["model_sha256"]
    figures = [a.path for a in client.list_artifacts(run_.info.run_id, "figures")]
    assert figures == [f"figures/{f}" for f in FIGURES]
    assert run_.data.tags["registered_version"] == "mnist-digits/1"
    assert run_.data.tags["champion"] == "true"
    champion = mlflow.MlflowClient().get_model_version_by_alias("mnist-digits", "champion")
    assert champion.run_id == run_.info.run_id
    run_file = json.loads((project / "models/run.json").read_text())
    assert run_file["run_id"] == run_.info.run_id


def test_logged_model_loads_and_predicts_like_the_stage_output(project: Path, default_run) -> None:
    import keras

    run_ = default_run
    (logged,) = mlflow.search_logged_models(
        experiment_ids=[run_.info.experiment_id],
        filter_string=f"source_run_id = '{run_.info.run_id}'",
        output_format="list",
    )
    assert logged.name == "model" and logged.params["model.hidden_units"] == "128"
    assert logged.model_id and logged.artifact_location.startswith((project / "mlruns").as_uri())
    from pipeline.core.shards import Shards

    x, y = Shards(project / "data/processed", "test").whole(200)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{logged.model_id}")
    (spec,) = pyfunc.metadata.signature.inputs.to_dict()
    assert list(spec["tensor-spec"]["shape"]) == [-1, 28, 28, 1]
    probs = np.asarray(pyfunc.predict(x))
    local = keras.models.load_model(project / "models/model.keras").predict(x, verbose=0)
    np.testing.assert_allclose(probs, local, atol=1e-6)
    assert (probs.argmax(axis=1) == y).mean() >= 0.95


def test_second_repro_skips_every_stage(project: Path) -> None:
    before = len(runs(project))
    proc = dvc(project, "repro")
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in proc.stdout
    assert "Data and pipelines are up to date." in proc.stdout
    assert len(runs(project)) == before


def test_plots_show_renders_curves_and_confusion(project: Path) -> None:
    dvc(project, "plots", "show", "-o", "plots-out")
    html = (project / "plots-out/index.html").read_text()
    for title in ("Loss per epoch", "Accuracy per epoch", "Confusion matrix (test set)"):
        assert title in html
    assert "predictions.png" in html


def test_bad_override_stops_before_training(project: Path) -> None:
    before = len(runs(project))
    proc = dvc(project, "exp", "run", "-S", "model.hidden_units=-3", check=False)
    assert proc.returncode != 0
    assert "model.hidden_units must be an integer > 0, received -3" in proc.stdout + proc.stderr
    assert len(runs(project)) == before
    run(["git", "checkout", "--", "params.yaml"], project)


def test_dvc_exp_run_with_hydra_override(project: Path) -> None:
    proc = dvc(
        project,
        "exp",
        "run",
        "-n",
        "h64",
        "-S",
        "model.hidden_units=64",
        "-S",
        "train.epochs=1",
        "-S",
        "train.max_examples=5000",
    )
    assert "Running stage 'train'" in proc.stdout and "Running stage 'fetch" not in proc.stdout
    shown = json.loads(dvc(project, "exp", "show", "--json").stdout)
    exp = find_exp(shown, "h64")
    assert exp is not None, shown
    data = exp["revs"][0]["data"] if "revs" in exp else exp["data"]
    assert data["params"]["params.yaml"]["data"]["model"]["hidden_units"] == 64
    accuracy = data["metrics"]["reports/metrics.json"]["data"]["test_accuracy"]
    new = [r for r in runs(project) if r.info.run_name == "mlp-h64-e1-n5000"]
    assert len(new) == 1 and new[0].info.status == "FINISHED"
    assert new[0].data.tags["dvc_exp_name"] == "h64"
    assert new[0].data.metrics["test_accuracy"] == pytest.approx(accuracy)
