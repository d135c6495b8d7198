"""A sweep's configurations through DVC: `dvc exp run --queue` with `dvc queue start -j 2` lands
in the project's store, and a sweep job and `dvc exp run` of the same configuration make the same
run (real MNIST, small)."""

import json
import re
import time
from pathlib import Path

import mlflow
import pytest

from helpers import QUICK_SWEEP, run, sweep_in, sweep_runs_in

pytestmark = pytest.mark.slow  # real training on MNIST, DVC experiments in several processes


def test_dvc_queue_lands_in_the_project_store(prepared: Path) -> None:
    run(
        [
            "dvc",
            "exp",
            "run",
            "--queue",
            "-S",
            "model.hidden_units=16,32",
            "-S",
            "train.epochs=1",
            "-S",
            "train.max_examples=1000",
            "-S",
            "tracking.experiment_name=queue",
        ],
        prepared,
    )
    run(["dvc", "queue", "start", "-j", "2"], prepared)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], prepared).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    assert status.count("Success") == 2, status
    _, children = sweep_runs_in(prepared, "queue")
    assert sorted(c.info.run_name for c in children) == ["mlp-h16-e1-n1000", "mlp-h32-e1-n1000"]
    names = {c.data.tags["dvc_exp_name"] for c in children}
    shown = json.loads(run(["dvc", "exp", "show", "--json"], prepared).stdout)
    assert all(name in json.dumps(shown) for name in names)
    assert not list((prepared / ".dvc/tmp/exps").glob("*/mlflow.db"))
    run(["dvc", "plots", "diff", *sorted(names), "-o", "plots-diff"], prepared)
    html = (prepared / "plots-diff/index.html").read_text()
    assert all(name in html for name in names) and "Accuracy per epoch" in html


def artifact_paths(run_id: str, path: str | None = None) -> set[str]:
    """Every artifact of the run; logged images by key (their files carry a time and an id)."""
    client = mlflow.MlflowClient()
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(run_id, item.path) if item.is_dir else {item.path}
    return {re.sub(r"\+step\+.*", "", p) for p in found}


def test_a_sweep_job_and_dvc_exp_run_make_the_same_run(prepared: Path) -> None:
    """One core: the same configuration through a sweep and through DVC gives the same run."""
    sweep_in(prepared, "parity", "model.hidden_units=16", "train.epochs=1")
    settings = [*QUICK_SWEEP, "model.hidden_units=16", "train.epochs=1"]
    settings.append("tracking.experiment_name=parity")
    run(
        ["dvc", "exp", "run", "-n", "parity", *(a for s in settings for a in ("-S", s))],
        prepared,
    )
    run(["git", "checkout", "--", "params.yaml"], prepared)
    _, runs = sweep_runs_in(prepared, "parity")
    (job,) = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    (stage,) = [r for r in runs if r is not job]
    assert job.info.status == stage.info.status == "FINISHED"
    assert job.info.run_name == f"{stage.info.run_name}-s42" == "mlp-h16-e1-n1000-s42"
    assert job.data.params == stage.data.params
    assert set(job.data.metrics) == set(stage.data.metrics)
    # A sweep's model also keeps what its figures are drawn from (on demand for all but the best).
    figure_data = "figures/figure_data.npz"
    assert artifact_paths(job.info.run_id) - {figure_data} == artifact_paths(stage.info.run_id)
    assert {"figures/confusion_matrix.png", "images/confusion_matrix"} <= artifact_paths(
        job.info.run_id
    )
    job_tags, stage_tags = set(job.data.tags), set(stage.data.tags)
    assert job_tags - stage_tags == {"mlflow.parentRunId", "sweep_overrides"}
    assert stage_tags - job_tags == {"dvc_exp_name", "dvc_exp_baseline_rev"}
    # Both registered: the stage its model, the sweep its best (here its only) configuration's.
    assert job.data.tags["registered_version"] != stage.data.tags["registered_version"]
    # Same seed, data, threads and code: the same model, bit for bit.
    for key in ("weights_sha256", "params_sha256", "git_commit", "git_dirty", "mlflow.user"):
        assert job.data.tags[key] == stage.data.tags[key], key
    assert job.data.tags["mlflow.source.git.commit"] == stage.data.tags["git_commit"]
    assert job.data.tags["mlflow.source.name"] == "pipeline/sweep.py"
    assert stage.data.tags["mlflow.source.name"] == "pipeline/train.py"
    assert job.data.metrics["test_accuracy"] == stage.data.metrics["test_accuracy"]
