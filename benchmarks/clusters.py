"""Benchmark: what each launcher adds to a sweep, on the stack's real clusters on this machine.

The same 8-job sweep (hidden sizes 8-36, 2 epochs, 5,000 examples, one TensorFlow thread per job)
against the stack's MLflow server, launched by the basic launcher (one job after another in the
sweep's process), by Ray on two one-CPU nodes, and by SLURM (`sbatch`) on the one-host cluster.
Per job, the overhead is the wall time times the jobs that can run at once (1, 2, 2), less the
jobs' own training time, over the jobs: start-up, scheduling and logging. The point is each
engine's overhead, not speed-up: two cores are two cores.

Writes `benchmarks/clusters.json`. Command: `uv run python benchmarks/clusters.py`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
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


def main() -> None:
    mirror = os.environ.get("MNIST_MIRROR") or str(ROOT.parent / "shared" / "data" / "mnist")
    work = Path(tempfile.mkdtemp(prefix="mnist-clusters-"))
    work.chmod(0o711)  # PostgreSQL's user passes through to the stack's folder
    folder, project = work / "stack", copy_project(work / "project")
    stack = [sys.executable, "-m", "pipeline.stack"]
    env = run_env(MNIST_MIRROR=mirror, RAY_worker_niceness="0")
    results: dict = {"machine": machine(), "jobs": 8, "launchers": {}}
    try:
        up = [*stack, "up", "--dir", str(folder), "--port", "auto", "--ray-nodes", "2", "--slurm"]
        _, _, out = timed(up, project, env)
        exports = dict(re.findall(r"^export (\w+)=(\S+)$", out, re.MULTILINE))
        timed([sys.executable, "-m", "dvc", "repro", "preprocess"], project, env)
        import mlflow

        os.environ.update(exports)
        for name, (extra, slots) in LAUNCHERS.items():
            experiment = re.sub(r"\W+", "-", name).strip("-")
            cmd = [sys.executable, "-m", "pipeline.sweep", *SWEEP, *extra,
                   f"tracking.experiment_name={experiment}"]  # fmt: skip
            wall, _, _ = timed(cmd, project, {**env, **exports})
            found = mlflow.search_runs(experiment_names=[experiment], output_format="list")
            jobs = [r for r in found if r.data.tags.get("sweep") != "parent"]
            training = sum(r.data.metrics["train_seconds"] for r in jobs)
            results["launchers"][name] = {
                "wall_s": round(wall, 1),
                "parallel_jobs": slots,
                "training_s": round(training, 1),
                "overhead_per_job_s": round((wall * slots - training) / len(jobs), 2),
                "runs": len(jobs),
            }
            print(name, results["launchers"][name], flush=True)
    finally:
        os.spawnv(os.P_WAIT, sys.executable, [*stack, "down", "--dir", str(folder)])
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=1))
    (ROOT / "benchmarks" / "clusters.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(f"{time.monotonic() - started:.0f} s")
