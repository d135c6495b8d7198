"""Benchmark: the team's stack (`python -m pipeline.stack up`) on this machine.

  (s1) seconds for `up` from an empty folder, and for `up` again after `down` (data kept);
  (s2) the standard 60-model grid (`+grid=hidden_epochs sweep.seeds=3`, basic launcher) against
       the stack's server, and the same grid against the local store: wall seconds and ratio;
  (s3) artifact upload through the server into the bucket: MB/s for one 64 MB file, and
       `dvc push -r stack` of the prepared data (MB/s).

Run nothing else heavy meanwhile. Writes `benchmarks/stack.json`.
Command: `uv run python benchmarks/stack.py` (MNIST_MIRROR or ../shared/data/mnist).
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

from run import GRID, machine, timed  # noqa: E402

from helpers import copy_project, run_env  # noqa: E402


def stack_up(project: Path, folder: Path) -> tuple[float, dict[str, str]]:
    cmd = [sys.executable, "-m", "pipeline.stack", "up", "--dir", str(folder), "--port", "auto"]
    seconds, _, out = timed(cmd, project, run_env())
    exports = dict(re.findall(r"^export (\w+)=(\S+)$", out, re.MULTILINE))
    return seconds, exports


def main() -> None:
    mirror = os.environ.get("MNIST_MIRROR") or str(ROOT.parent / "shared" / "data" / "mnist")
    work = Path(tempfile.mkdtemp(prefix="mnist-stack-bench-"))
    work.chmod(0o711)  # PostgreSQL's user passes through to the stack's folder
    folder = work / "stack"
    project = copy_project(work / "project")
    env = run_env(MNIST_MIRROR=mirror)
    results: dict = {"machine": machine()}
    try:
        first, exports = stack_up(project, folder)
        down = [sys.executable, "-m", "pipeline.stack", "down", "--dir", str(folder)]
        timed(down, project, run_env())
        again, exports = stack_up(project, folder)
        results["up_s"] = {"empty_folder": round(first, 1), "again": round(again, 1)}
        print(results["up_s"], flush=True)
        timed([sys.executable, "-m", "dvc", "repro", "preprocess"], project, env)

        walls = {}
        for name, extra in (("local", {}), ("stack", exports)):
            cmd = [
                sys.executable,
                "-m",
                "pipeline.sweep",
                *GRID,
                f"tracking.experiment_name={name}",
            ]
            walls[name], _, _ = timed(cmd, project, {**env, **extra})
            print(f"grid on {name}: {walls[name]:.1f} s", flush=True)
        results["grid_wall_s"] = {k: round(v, 1) for k, v in walls.items()}
        results["grid_stack_over_local"] = round(walls["stack"] / walls["local"], 3)

        big = work / "blob.bin"
        big.write_bytes(os.urandom(64 * 2**20))
        upload = (
            "import mlflow, sys, time; c = mlflow.MlflowClient(); "
            "r = c.create_run(c.create_experiment('upload')).info.run_id; "
            "t = time.perf_counter(); c.log_artifact(r, sys.argv[1]); "
            "print(time.perf_counter() - t)"
        )
        _, _, out = timed([sys.executable, "-c", upload, str(big)], project, {**env, **exports})
        results["artifact_upload_mb_s"] = round(64 / float(out.strip().splitlines()[-1]), 1)
        megabytes = sum(p.stat().st_size for p in (project / "data").rglob("*") if p.is_file())
        push, _, _ = timed([sys.executable, "-m", "dvc", "push", "-r", "stack"], project, env)
        results["dvc_push"] = {"mb": round(megabytes / 2**20, 1), "seconds": round(push, 1)}
        results["dvc_push_mb_s"] = round(megabytes / 2**20 / push, 1)
        timed(down, project, run_env())
    finally:
        cmd = [sys.executable, "-m", "pipeline.stack", "down", "--dir", str(folder)]
        os.spawnv(os.P_WAIT, sys.executable, cmd)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=1))
    (ROOT / "benchmarks" / "stack.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(f"{time.monotonic() - started:.0f} s")
