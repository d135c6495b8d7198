"""Benchmark: what each launcher adds to a sweep, on the stack's real clusters on this machine.

The same 8-job sweep (hidden sizes 8-36, 2 epochs, 5,000 examples, one TensorFlow thread per job)
against the stack's MLflow server, launched by the basic launcher (one job after another in the
sweep's process), by Ray on two one-CPU nodes, by SLURM (`sbatch`) on the one-host cluster, and
by Ray on two hosts of their own (`up --ray-hosts 2`: each job's code shipped by Ray, its data
pulled from the stack's DVC remote), cold (the hosts just started) and again warm (Ray's
workers kept from the first sweep). Per job, the overhead is the wall time times the jobs that
can run at once (1, 2, 2, 2), less the jobs' own training time, over the jobs: start-up,
scheduling, data and logging; and, from each job's outcome, the median seconds of its data
(pull and check), its set-up (imports, the store) and its training. The point is each engine's
overhead, not speed-up: two cores are two cores.

Writes `benchmarks/clusters.json`. Command: `uv run python benchmarks/clusters.py`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

from run import machine, timed  # noqa: E402

from helpers import copy_project, run_env  # noqa: E402

SWEEP = [
    "-m", "model.hidden_units=8,12,16,20,24,28,32,36", "train.epochs=2",
    "train.max_examples=5000", "train.intra_op_threads=1", "train.inter_op_threads=1",
]  # fmt: skip
LAUNCHERS = {
    "basic": ([], 1),
    "ray (2 nodes)": (["hydra/launcher=ray_cluster"], 2),
    "slurm (sbatch)": (["hydra/launcher=slurm", "hydra.launcher.mem_gb=1"], 2),
}
HOSTS = {"ray (2 hosts), cold": 2, "ray (2 hosts), warm": 2}


def job_seconds(project: Path) -> dict[str, float]:
    """Median seconds per job of its data, set-up and training, from the outcomes of the
    newest sweep's jobs."""
    sweep = max(project.glob("multirun/*/*"), key=lambda p: p.stat().st_mtime)
    parent = json.loads((sweep / "parent_run.json").read_text())
    jobs = [json.loads(p.read_text()) for p in sweep.glob("*/job.json")]
    timing = [j["seconds"] for j in jobs if "seconds" in j]
    median = {
        key: round(statistics.median(t.get(key, 0.0) for t in timing), 2)
        for key in ("data", "setup", "training")
    }
    return {**median, "shipped": bool(parent.get("shipped"))}


def sweep_with(
    project: Path,
    env: dict[str, str],
    exports: dict[str, str],
    name: str,
    extra: list[str],
    slots: int,
) -> dict:
    import mlflow

    experiment = re.sub(r"\W+", "-", name).strip("-")
    cmd = [sys.executable, "-m", "pipeline.sweep", *SWEEP, *extra,
           f"tracking.experiment_name={experiment}"]  # fmt: skip
    wall, _, _ = timed(cmd, project, {**env, **exports})
    os.environ.update(exports)
    found = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    jobs = [r for r in found if r.data.tags.get("sweep") != "parent"]
    training = sum(r.data.metrics["train_seconds"] for r in jobs)
    row = {
        "wall_s": round(wall, 1),
        "parallel_jobs": slots,
        "training_s": round(training, 1),
        "overhead_per_job_s": round((wall * slots - training) / len(jobs), 2),
        "runs": len(jobs),
        "median_job_s": job_seconds(project),
    }
    print(name, row, flush=True)
    return row


def with_stack(work: Path, project: Path, env: dict, options: list[str]):
    """`up` with `options` in a folder of its own; returns its folder and exports."""
    folder = work / f"stack-{len(list(work.glob('stack-*')))}"
    stack = [sys.executable, "-m", "pipeline.stack"]
    up = [*stack, "up", "--dir", str(folder), "--port", "auto", *options]
    _, _, out = timed(up, project, env)
    return folder, dict(re.findall(r"^export (\w+)=(\S+)$", out, re.MULTILINE))


def main() -> None:
    mirror = os.environ.get("MNIST_MIRROR") or str(ROOT.parent / "shared" / "data" / "mnist")
    work = Path(tempfile.mkdtemp(prefix="mnist-clusters-"))
    work.chmod(0o711)  # PostgreSQL's user passes through to the stack's folder
    project = copy_project(work / "project")
    stack = [sys.executable, "-m", "pipeline.stack"]
    env = run_env(MNIST_MIRROR=mirror, RAY_worker_niceness="0")
    results: dict = {"machine": machine(), "jobs": 8, "launchers": {}}
    folders = []
    try:
        timed([sys.executable, "-m", "dvc", "repro", "preprocess"], project, env)
        folder, exports = with_stack(work, project, env, ["--ray-nodes", "2", "--slurm"])
        folders.append(folder)
        for name, (extra, slots) in LAUNCHERS.items():
            results["launchers"][name] = sweep_with(project, env, exports, name, extra, slots)
        os.spawnv(os.P_WAIT, sys.executable, [*stack, "down", "--dir", str(folder)])
        folder, exports = with_stack(work, project, env, ["--ray-hosts", "2"])
        folders.append(folder)
        for name, slots in HOSTS.items():
            extra = ["hydra/launcher=ray_cluster"]
            results["launchers"][name] = sweep_with(project, env, exports, name, extra, slots)
    finally:
        for folder in folders:
            os.spawnv(os.P_WAIT, sys.executable, [*stack, "down", "--dir", str(folder)])
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=1))
    (ROOT / "benchmarks" / "clusters.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(f"{time.monotonic() - started:.0f} s")
