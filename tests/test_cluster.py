"""Sweeps on a real Ray cluster: two nodes started by `pipeline.stack up --ray-nodes 2`, jobs
spread over both, and one node lost (SIGKILL to its process group) while its job trains."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import (
    ROOT,
    as_stack_user,
    assert_complete_child,
    child_runs,
    copy_project,
    run,
    run_env,
    sweep_in_background,
    team_stack,
)
from pipeline.core.names import TRAINED_IN_TAG
from pipeline.stack.processes import alive_in_group, read_pid

pytestmark = pytest.mark.slow  # the team's stack and a Ray cluster of two nodes

RAY = ["hydra/launcher=ray_cluster", "train.intra_op_threads=1", "train.inter_op_threads=1"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, dict]]:
    """A project copy and a stack with two Ray nodes; yields (project, stack folder, exports).
    Ray runs its workers 15 steps nicer than `ray start` by default: beside the other tests'
    training that starves them, so the nodes here run them at the suite's priority."""
    project = copy_project(tmp_path_factory.mktemp("cluster-project"))
    run(["dvc", "repro", "preprocess"], project)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_worker_niceness", "0")  # the nodes `up` starts inherit it
        with team_stack(project, "--ray-nodes", "2") as (folder, env):
            yield project, folder, env


def checkpoint_files(run_id: str) -> list[str]:
    """The files of run `run_id`'s kept checkpoint (its `resume/` folder)."""
    import mlflow

    return [a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "resume")]


def node_ids(project: Path, folder: Path) -> dict[str, str]:
    """`status`'s Ray lines: the node's label -> its node id."""
    status = run(
        [sys.executable, "-m", "pipeline.stack", "status", "--dir", str(folder)],
        project,
        PYTHONPATH=str(ROOT),
    ).stdout
    return dict(re.findall(r"^(the Ray head|Ray node \d+) .* node id (\w+)$", status, re.M))


def training_on(node_id: str, experiment: str) -> str | None:
    """A run of `experiment` on the node `node_id` that is training and has kept a checkpoint
    of an epoch in the run (pipeline/sweeps/resuming.py)."""
    import mlflow

    client = mlflow.MlflowClient()
    for r in child_runs(experiment):
        if r.data.tags.get("ray.node_id") == node_id and r.info.status == "RUNNING":
            kept = {a.path for a in client.list_artifacts(r.info.run_id, "resume")}
            if "resume/checkpoint.json" in kept:
                return r.info.run_id
    return None


def test_a_sweep_spreads_over_both_nodes_and_survives_losing_one(
    cluster: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    """A 4-job sweep over two nodes; the second node is killed (SIGKILL to its process group)
    while one of its jobs trains, after it kept a checkpoint in its run. The job runs again on
    the head, resumes from that checkpoint and finishes, as do the other three; the lost
    attempt's run ends KILLED, saying where its training went on."""
    project, folder, env = cluster
    ids = node_ids(project, folder)
    assert set(ids) == {"the Ray head", "Ray node 1"}, ids
    sweep = [
        sys.executable, "-m", "pipeline.sweep", "-m", "model.hidden_units=8,12,16,20",
        "train.epochs=20", "train.max_examples=20000", "tracking.experiment_name=ray", *RAY,
    ]  # fmt: skip
    process, out, errors = sweep_in_background(sweep, project, env, tmp_path)
    with as_stack_user(env):
        deadline = time.monotonic() + 300
        while (killed_run := training_on(ids["Ray node 1"], "ray")) is None:
            assert process.poll() is None and time.monotonic() < deadline, errors.read_text()
            time.sleep(0.3)
        group = read_pid(folder / "run" / "ray-1.pid")
        os.killpg(group, signal.SIGKILL)  # the node is lost
        assert process.wait(timeout=600) in (0, 1)
        said = out.read_text() + errors.read_text()
        runs = {r.info.run_id: r for r in child_runs("ray")}
        parent_id = runs[killed_run].data.tags["mlflow.parentRunId"]
        finished = [r for r in runs.values() if r.info.status == "FINISHED"]
        for child in finished:
            assert_complete_child(child, parent_id, epochs=20, examples=20000)
        left = {r.info.run_id: checkpoint_files(r.info.run_id) for r in finished}
        left = {run_id: files for run_id, files in left.items() if files}
    assert not alive_in_group(group)
    # Both nodes ran jobs, each job in a Ray worker process, not in the sweep's own, on the
    # code Ray shipped them (its working_dir, as on hosts of their own: tests/test_hosts.py),
    # in the environment the nodes share: Ray's `uv run` hook (the tests run under `uv run`)
    # installed no environment into it.
    assert {r.data.tags["ray.node_id"] for r in runs.values()} == set(ids.values())
    assert len({r.data.tags["pid"] for r in runs.values()}) >= 2
    assert list((folder / "ray").glob("session_*/runtime_resources/working_dir_files/_ray_pkg_*"))
    assert not list((folder / "ray").glob("session_*/runtime_resources/uv/*"))
    # Every job finished: the lost one retried on the head (Ray's task retries), its run the
    # lost attempt's configuration, complete (all 20 epochs); the summary counts the 4 and the
    # lost attempt.
    assert process.returncode == 0, said[-3000:]
    assert len(finished) == 4 and "5 runs, 4 configurations" in said, said[-3000:]
    lost = runs[killed_run]
    (retry,) = [r for r in finished if r.info.run_name == lost.info.run_name]
    assert retry.data.tags["ray.node_id"] == ids["the Ray head"]
    # It resumed where the lost attempt's last checkpoint was, not from the start.
    assert retry.data.tags["resumed_from"] == killed_run
    assert 1 <= int(retry.data.tags["resumed_at_epoch"]) < 20
    assert not left, left  # no finished run keeps its checkpoints
    # The lost attempt: KILLED, not left RUNNING, saying where its training went on.
    assert lost.info.status == "KILLED", lost.info.status
    assert f"its training resumed in run {retry.info.run_id}" in lost.data.tags["failure_reason"]
    assert "RUNNING" not in {r.info.status for r in runs.values()}


def test_a_job_no_node_can_hold_fails_at_once(
    cluster: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    """Each node has one CPU; a sweep typed without train.intra_op_threads=1 asks 2 a job. It
    stops before any job, in one line naming the resource, what the largest node has and the
    setting, instead of waiting for ever for a node that cannot come."""
    project, _, env = cluster
    sweep = [
        sys.executable,
        "-m",
        "pipeline.sweep",
        "-m",
        "model.hidden_units=8,16",
        "hydra/launcher=ray_cluster",
        "train.epochs=1",
        "tracking.experiment_name=too-big",
    ]
    proc = subprocess.run(
        sweep, cwd=project, env=run_env(**env), capture_output=True, text=True, timeout=600
    )  # fmt: skip  (ends only a hung test)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    said = re.search(
        r"a job asks Ray for 2 CPU\(s\), but the largest of its \d node\(s\) has 1: no",
        proc.stderr,
    )
    assert said and "e.g. train.intra_op_threads=1" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "No available node types" not in proc.stderr
    with as_stack_user(env):
        assert child_runs("too-big") == []


def test_a_ray_sweep_over_epoch_counts_shares_them_and_makes_the_same_models(
    cluster: tuple[Path, Path, dict],
) -> None:
    """On the stack's Ray nodes, a sweep over 1 and 2 epochs trains once: its 1-epoch run is
    tagged with the 2-epoch run that made it; an unshared sweep (`sweep.share_epochs=false`) of
    the same configurations makes both models with the same weights."""
    project, _, env = cluster
    digests = {}
    for experiment, share in (("ray-shared", "true"), ("ray-alone", "false")):
        sweep = [
            sys.executable, "-m", "pipeline.sweep", "-m", "model.hidden_units=8",
            "train.epochs=1,2", "train.max_examples=2000", f"sweep.share_epochs={share}",
            f"tracking.experiment_name={experiment}", *RAY,
        ]  # fmt: skip
        proc = subprocess.run(
            sweep, cwd=project, env=run_env(**env), capture_output=True, text=True, timeout=900
        )  # fmt: skip  (ends only a hung test)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert ("from 1 trainings (2 epochs, not 3)" in proc.stderr) == (share == "true")
        with as_stack_user(env):
            runs = {r.data.params["train.epochs"]: r for r in child_runs(experiment)}
        assert sorted(runs) == ["1", "2"] and {r.info.status for r in runs.values()} == {
            "FINISHED"
        }
        trained_in = runs["1"].data.tags.get(TRAINED_IN_TAG)
        assert trained_in == (runs["2"].info.run_id if share == "true" else None)
        digests[experiment] = {k: r.data.tags["weights_sha256"] for k, r in runs.items()}
    assert digests["ray-shared"] == digests["ray-alone"]
