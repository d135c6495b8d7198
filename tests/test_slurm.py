"""Sweeps on a real SLURM cluster: `pipeline.stack up --slurm` starts munge, slurmctld and slurmd
from Debian's packages on this host; the `slurm` launcher preset submits the jobs through
`sbatch` (submitit); one job is cancelled with `scancel` while it trains."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from helpers import (
    as_stack_user,
    assert_complete_child,
    child_runs,
    copy_project,
    run,
    run_env,
    sweep_in_background,
    team_stack,
    unavailable,
)

pytestmark = pytest.mark.slow  # the team's stack and a SLURM cluster


@pytest.fixture(scope="module", autouse=True)
def slurm_installed() -> None:
    if shutil.which("slurmctld", path="/usr/sbin:/usr/bin") is None:
        unavailable(
            "SLURM's slurmctld not found: install Debian's slurm-wlm and munge packages "
            "(`apt-get install slurmctld slurmd slurm-client munge`)"
        )


SLURM = [
    "hydra/launcher=slurm", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=20",
    "train.intra_op_threads=1", "train.inter_op_threads=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict]]:
    """A project copy and a stack with a one-host SLURM cluster; yields (project, exports)."""
    project = copy_project(tmp_path_factory.mktemp("slurm-project"))
    run(["dvc", "repro", "preprocess"], project)
    with team_stack(project, "--slurm") as (_, env):
        yield project, env


def queue(env: dict[str, str]) -> str:
    return subprocess.run(
        ["squeue", "--noheader"], env=run_env(**env), capture_output=True, text=True, check=True
    ).stdout


def test_a_sweep_through_sbatch_with_one_job_cancelled(
    cluster: tuple[Path, dict], tmp_path: Path
) -> None:
    """4 jobs through `sbatch`; one is cancelled (`scancel`) while it trains: its run ends, the
    sweep names it and exits 1, the other three land complete in the stack's server with their
    SLURM job ids, the summary is written and the queue is empty."""
    project, env = cluster
    sweep = [
        sys.executable, "-m", "pipeline.sweep", "-m", "model.hidden_units=8,12,16,20",
        "train.epochs=20", "train.max_examples=20000", "tracking.experiment_name=cancel", *SLURM,
    ]  # fmt: skip
    process, out, errors = sweep_in_background(sweep, project, env, tmp_path)
    with as_stack_user(env):
        deadline, client = time.monotonic() + 300, mlflow.MlflowClient()
        while True:  # until a job's run has been training for two seconds
            training = [
                r
                for r in child_runs("cancel")
                if r.info.status == "RUNNING" and time.time() * 1000 - r.info.start_time > 2000
            ]
            if training:
                break
            assert process.poll() is None and time.monotonic() < deadline, errors.read_text()
            time.sleep(0.5)
        cancelled = training[0]
        job_id = cancelled.data.tags["slurm.job_id"]
        subprocess.run(["scancel", job_id], env=run_env(**env), check=True)
        assert process.wait(timeout=600) == 1
        said = errors.read_text()
        ended = client.get_run(cancelled.info.run_id)
        runs = child_runs("cancel")
        parent_id = cancelled.data.tags["mlflow.parentRunId"]
        finished = [r for r in runs if r.info.status == "FINISHED"]
        for child in finished:
            assert_complete_child(child, parent_id, epochs=20, examples=20000)
    assert ended.info.status in ("KILLED", "FAILED"), ended.info.status
    assert "1 of 4 jobs failed:" in said, said[-3000:]
    assert re.search(rf"^  job \d \(.*\): SLURM job {job_id} ended CANCELLED", said, re.M), said
    assert "Traceback" not in said and "RUNNING" not in {r.info.status for r in runs}
    assert len(finished) == 3
    jobs = {r.data.tags["slurm.job_id"] for r in runs}
    assert len(jobs) == 4 and all(re.fullmatch(r"\d+_\d", j) for j in jobs), jobs
    assert (next((project / "multirun").glob("*/*")) / "summary.csv").is_file()
    assert queue(env) == ""


def test_a_job_no_node_can_hold_fails_at_once(cluster: tuple[Path, dict]) -> None:
    """The one node has the machine's CPUs and memory; a job asking for more memory than it has
    stops the sweep before any `sbatch`, in one line naming the memory, the node's and the
    setting."""
    project, env = cluster
    sweep = [
        sys.executable,
        "-m",
        "pipeline.sweep",
        "-m",
        "model.hidden_units=8,16",
        *SLURM,
        "hydra.launcher.mem_gb=100000",
        "tracking.experiment_name=too-big",
    ]
    proc = subprocess.run(
        sweep, cwd=project, env=run_env(**env), capture_output=True, text=True, timeout=600
    )  # fmt: skip  (ends only a hung test)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    said = "a job asks SLURM for 102400000 MB of memory, but the largest of its 1 node(s) has"
    assert said in proc.stderr and "Change hydra.launcher.mem_gb" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Submitted" not in proc.stdout + proc.stderr and queue(env).strip() == ""
