"""Beyond one machine: a real MLflow server on a real PostgreSQL.

PostgreSQL (Debian's `postgresql` package; `.ci/run` installs it where it is missing) runs as a
non-root user in a temporary data directory, and `mlflow server` uses it as its backend store
with proxied artifacts. Both listen on 127.0.0.1 only and are stopped after the tests.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from helpers import (
    assert_complete_child,
    copy_project,
    free_port,
    mlflow_server,
    restart_postgres,
    run,
    run_env,
    runs_in,
    serving,
)
from pipeline.core.config import params_yaml_text

pytestmark = pytest.mark.slow  # PostgreSQL, an MLflow server

QUICK = ["train.max_examples=2000", "train.epochs=2"]


@pytest.fixture(scope="module")
def server(postgres: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`mlflow server` on PostgreSQL with proxied artifacts; yields its URL and artifact folder."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    artifacts, log = folder / "artifacts", folder / "server.log"
    args = [
        "server", "--backend-store-uri", postgres, "--artifacts-destination", str(artifacts),
        "--workers", "2",
    ]  # fmt: skip
    with mlflow_server(*args, log=log) as url:
        yield url, artifacts


def test_pipeline_on_team_server_with_proxied_artifacts(
    server: tuple[str, Path], tmp_path: Path
) -> None:
    url, artifacts = server
    project = copy_project(tmp_path)
    overrides = ["tracking=server", f"tracking.uri={url}", "tracking.experiment_name=team"]
    (project / "params.yaml").write_text(params_yaml_text([*overrides, *QUICK]))
    run(["dvc", "repro"], project)
    assert not (project / "mlflow.db").exists(), "the run went to the local store"

    (single,) = runs_in(url, "team")
    client = mlflow.MlflowClient()
    assert single.info.status == "FINISHED"
    assert len(client.get_metric_history(single.info.run_id, "val_accuracy")) == 2
    assert single.data.metrics["test_accuracy"] > 0.8
    figures = {a.path for a in client.list_artifacts(single.info.run_id, "figures")}
    assert {"figures/confusion_matrix.png", "figures/predictions.png"} <= figures
    champion = client.get_model_version_by_alias("mnist-digits", "champion")
    assert champion.run_id == single.info.run_id
    loaded = mlflow.tensorflow.load_model("models:/mnist-digits@champion")
    assert loaded.output_shape == (None, 10)
    # Proxied artifacts: the files are in the server's artifact folder, not the project.
    assert list(artifacts.rglob("confusion_matrix.png")) and not (project / "mlruns").exists()


def test_postgres_restarted_between_stages_and_evaluate_logs_to_trains_run(
    server: tuple[str, Path], postgres: str, tmp_path: Path
) -> None:
    url, _ = server
    project = copy_project(tmp_path)
    overrides = ["tracking=server", f"tracking.uri={url}", "tracking.experiment_name=pg-restart"]
    (project / "params.yaml").write_text(params_yaml_text([*overrides, *QUICK]))
    run(["dvc", "repro", "train"], project)
    trained = json.loads((project / "models/run.json").read_text())["run_id"]
    restart_postgres(postgres)  # every connection the server holds is gone
    run(["dvc", "repro", "evaluate"], project)
    (one,) = runs_in(url, "pg-restart")
    assert one.info.run_id == trained and one.info.status == "FINISHED"
    assert one.data.metrics["test_accuracy"] > 0.8
    figures = {a.path for a in mlflow.MlflowClient().list_artifacts(trained, "figures")}
    assert "figures/confusion_matrix.png" in figures


def test_server_stopped_mid_sweep(postgres: str, tmp_path: Path) -> None:
    """The server stops while a sweep runs: the sweep ends within a bounded time, non-zero,
    naming the jobs that failed; the finished jobs' runs are complete; once the server is back,
    `pipeline.runs --cleanup` closes the runs left open."""
    port = free_port()
    server = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", postgres,
              "--artifacts-destination", str(tmp_path / "artifacts"),
              "--workers", "1", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    project = copy_project(tmp_path / "project")
    url = f"http://127.0.0.1:{port}"
    overrides = ["tracking=server", f"tracking.uri={url}", "tracking.experiment_name=stopped"]
    (project / "params.yaml").write_text(params_yaml_text(overrides))
    run(["dvc", "repro", "preprocess"], project)
    sweep = [sys.executable, "-m", "pipeline.sweep", "-m", "model.hidden_units=8,12,16,20,24,28",
             "train.epochs=2", "train.max_examples=1000", *overrides]  # fmt: skip
    with (
        serving(server, port, "/health", tmp_path / "first.log", None),
        (tmp_path / "sweep.out").open("w") as out,
        (tmp_path / "sweep.err").open("w") as errors,
    ):
        process = subprocess.Popen(sweep, cwd=project, env=run_env(), stdout=out, stderr=errors)
        patience = 180  # seconds for the first two runs to finish
        deadline = time.monotonic() + patience
        while len(done := finished_children(url, "stopped")) < 2:
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"{len(done)} of the sweep's runs finished in {patience} s")
            time.sleep(0.3)
    stopped = time.monotonic()  # the server is down from here
    process.wait(timeout=300)
    took = time.monotonic() - stopped
    err = (tmp_path / "sweep.err").read_text()
    # 14 s on an idle machine: the request in flight pays its retries, what waits for the
    # server fails at its health check. The models' background evaluation runs at a low CPU
    # priority (pipeline/sweeps/finishing.py, NICENESS): the suite runs at the same one
    # (conftest.py), or the other workers' training would hold it back for minutes.
    assert process.returncode == 1 and took < 180, (took, err[-2000:])
    assert "jobs failed:" in err and "does not answer" in err, err[-3000:]
    assert "Traceback" not in err and "MlflowException" not in err, err[-3000:]
    print(f"the sweep ended {took:.1f} s after the server stopped")
    named = set(re.findall(r"^  job (\d+) ", err, re.M))
    assert named and named <= {"2", "3", "4", "5"}, err[-3000:]
    assert not (project / "mlflow.db").exists()

    with serving(server, port, "/health", tmp_path / "second.log", None):
        done = finished_children(url, "stopped")
        assert len(done) >= 2
        parent_id = done[0].data.tags["mlflow.parentRunId"]
        for child in done:
            assert_complete_child(child, parent_id, epochs=2)
        left_open = [r for r in runs_in(url, "stopped") if r.info.status == "RUNNING"]
        assert left_open  # at least the parent, which the sweep could not close
        cleanup = run(["python", "-m", "pipeline.runs", "--cleanup"], project)
        assert f"{len(left_open)} marked KILLED" in cleanup.stdout, cleanup.stdout
        after = {r.info.run_id: r.info.status for r in runs_in(url, "stopped")}
        assert all(after[r.info.run_id] == "KILLED" for r in left_open)
        assert "RUNNING" not in after.values()


def finished_children(url: str, experiment: str) -> list:
    try:
        runs = runs_in(url, experiment)
    except mlflow.exceptions.MlflowException:
        return []  # not created yet
    return [
        r for r in runs if r.data.tags.get("sweep") != "parent" and r.info.status == "FINISHED"
    ]
