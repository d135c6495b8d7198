"""Beyond one machine: the team's stack (`pipeline.stack up`) losing a part while work runs.

PostgreSQL (Debian's `postgresql` package; `.ci/run` installs it where it is missing) restarts
between two stages; the MLflow server stops in the middle of a sweep and comes back. The stack
runs on 127.0.0.1 only and is stopped after the tests.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from helpers import (
    ROOT,
    as_stack_user,
    assert_complete_child,
    copy_project,
    run,
    run_env,
    runs_in,
)
from pipeline.core.config import params_yaml_text
from pipeline.stack.team import Stack

pytestmark = pytest.mark.slow  # the team's stack

QUICK = ["train.max_examples=2000", "train.epochs=2"]


def stack_command(folder: Path, action: str) -> None:
    """`python -m pipeline.stack ACTION --dir FOLDER`, as a user types it."""
    command = [sys.executable, "-m", "pipeline.stack", action, "--dir", str(folder)]
    run(command, folder, PYTHONPATH=str(ROOT))


def test_postgres_restarted_between_stages_and_evaluate_logs_to_trains_run(
    stack: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    folder, env = stack
    url = env["MLFLOW_TRACKING_URI"]
    project = copy_project(tmp_path)
    (project / "params.yaml").write_text(
        params_yaml_text(["tracking.experiment_name=pg-restart", *QUICK])
    )
    run(["dvc", "repro", "train"], project, **env)
    trained = json.loads((project / "models/run.json").read_text())["run_id"]
    server = Stack(folder).server.pid()
    Stack(folder).postgres.stop()  # every connection the server holds is gone
    stack_command(folder, "up")
    assert Stack(folder).server.pid() == server  # `up` started PostgreSQL alone: it survived
    run(["dvc", "repro", "evaluate"], project, **env)
    with as_stack_user(env):
        (one,) = runs_in(url, "pg-restart")
        assert one.info.run_id == trained and one.info.status == "FINISHED"
        assert one.data.metrics["test_accuracy"] > 0.8
        figures = {a.path for a in mlflow.MlflowClient().list_artifacts(trained, "figures")}
    assert "figures/confusion_matrix.png" in figures


SWEEP = ["-m", "model.hidden_units=8,12,16,20,24,28", "train.epochs=2", "train.max_examples=1000"]


def start_sweep_then_kill_the_server(
    folder: Path, env: dict[str, str], project: Path, experiment: str, *overrides: str
) -> subprocess.Popen:
    """A 6-job sweep on the basic launcher against the stack's server, whose processes are
    SIGKILLed once the first two runs have finished. Returns the running sweep."""
    settings = [f"tracking.experiment_name={experiment}", *overrides]
    (project / "params.yaml").write_text(params_yaml_text(settings))
    run(["dvc", "repro", "preprocess"], project)
    sweep = [sys.executable, "-m", "pipeline.sweep", *SWEEP, *settings]
    url = env["MLFLOW_TRACKING_URI"]
    with (
        (project / "sweep.out").open("w") as out,
        (project / "sweep.err").open("w") as errors,
        as_stack_user(env),
    ):
        process = subprocess.Popen(
            sweep, cwd=project, env=run_env(**env), stdout=out, stderr=errors
        )
        deadline = time.monotonic() + 300  # ends only a hung test
        while len(finished_children(url, experiment)) < 2:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail("the sweep's first two runs did not finish")
            time.sleep(0.3)
        server = Stack(folder).server
        os.killpg(server.pid(), signal.SIGKILL)  # as a crash or a pod moved: no goodbye
    return process


def test_a_sweep_waits_for_a_server_that_comes_back(
    stack: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """The server is killed mid-sweep and started again 30 s later (`stack up`): the sweep
    says once that it waits and for how long, then carries on; it ends 0, and every run of it
    ends FINISHED with both epochs' metrics, its model and test scores, the parent with its
    summary."""
    folder, env = stack
    project = copy_project(tmp_path / "project")
    process = start_sweep_then_kill_the_server(folder, env, project, "restarted")
    time.sleep(30)  # the outage: the length is the test's subject, not a wait for an event
    stack_command(folder, "up")  # the server again, on the same database and bucket
    assert process.wait(timeout=600) == 0, (project / "sweep.err").read_text()[-3000:]
    err = (project / "sweep.err").read_text()
    said = [line for line in err.splitlines() if "does not answer" in line]
    assert len(said) == 1, err[-3000:]  # once, by the sweep's one process
    assert "waiting up to 120 s for it (tracking.server_wait_s)" in said[0], said
    assert "Traceback" not in err and "Retrying" not in err, err[-3000:]
    url = env["MLFLOW_TRACKING_URI"]
    with as_stack_user(env):
        runs = runs_in(url, "restarted")
        (parent,) = [r for r in runs if r.data.tags.get("sweep") == "parent"]
        children = [r for r in runs if r is not parent]
        assert [r.info.status for r in runs].count("FINISHED") == 7, [
            (r.info.run_name, r.info.status) for r in runs
        ]
        for child in children:
            assert_complete_child(child, parent.info.run_id, epochs=2)
        summary = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id)}
    assert len(children) == 6 and "summary.csv" in summary, summary


def test_a_server_away_longer_than_the_wait_fails_the_sweep_in_one_line(
    stack: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """The server is killed mid-sweep and stays away longer than `tracking.server_wait_s` (10 s
    here): the sweep ends non-zero, naming the jobs that failed, without a traceback; the
    finished jobs' runs are complete; once the server is back, `pipeline.runs --cleanup` closes
    the runs left open and none is RUNNING."""
    folder, env = stack
    project = copy_project(tmp_path / "project")
    wait = "tracking.server_wait_s=10"
    process = start_sweep_then_kill_the_server(folder, env, project, "stopped", wait)
    assert process.wait(timeout=600) == 1
    err = (project / "sweep.err").read_text()
    assert "jobs failed:" in err and "does not answer" in err, err[-3000:]
    assert "waiting up to 10 s for it" in err, err[-3000:]
    assert "Traceback" not in err and "MlflowException" not in err, err[-3000:]
    named = set(re.findall(r"^  job (\d+) ", err, re.M))
    assert named and named <= {"2", "3", "4", "5"}, err[-3000:]
    assert not (project / "mlflow.db").exists()

    stack_command(folder, "up")  # the server again, on the same database
    url = env["MLFLOW_TRACKING_URI"]
    with as_stack_user(env):
        done = finished_children(url, "stopped")
        assert len(done) >= 2
        parent_id = done[0].data.tags["mlflow.parentRunId"]
        for child in done:
            assert_complete_child(child, parent_id, epochs=2)
        left_open = [r for r in runs_in(url, "stopped") if r.info.status == "RUNNING"]
        assert left_open  # at least the parent, which the sweep could not close
        cleanup = run(["python", "-m", "pipeline.runs", "--cleanup"], project, **env)
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
