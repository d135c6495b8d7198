"""Beyond one machine: a sweep's jobs as tasks of a running Ray cluster, and the SLURM preset."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from helpers import ROOT, assert_complete_child, copy_project, free_port, run, run_env, use_store

pytestmark = pytest.mark.slow  # a Ray cluster


def test_slurm_preset_composes_the_submitit_launcher() -> None:
    """The SLURM preset cannot run here (no cluster); it must at least compose as documented."""
    proc = run(["python", "-m", "pipeline.sweep", "hydra/launcher=slurm", "--cfg", "hydra"], ROOT)
    launcher = proc.stdout.split("\n  launcher:\n", 1)[1]
    target = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert f"_target_: {target}" in launcher
    assert "timeout_min: 60" in launcher and "array_parallelism: 16" in launcher


@pytest.fixture
def ray_head(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local Ray head on 127.0.0.1, started as a team would (`ray start`); yields its address
    and its temporary folder."""
    # Short, because Ray's socket paths must fit in 107 bytes.
    temp = Path(tempfile.mkdtemp(prefix="ray-"))
    address = f"127.0.0.1:{free_port()}"
    ray = str(Path(sys.executable).parent / "ray")
    start = [
        ray, "start", "--head", "--node-ip-address=127.0.0.1",
        f"--port={address.rsplit(':', 1)[1]}", "--num-cpus=2", "--include-dashboard=false",
        "--disable-usage-stats", f"--temp-dir={temp}",
    ]  # fmt: skip
    # From a folder without the project in it: tasks must find it through the preset.
    # Token auth is off on both sides, whatever token an earlier local Ray left in ~/.ray.
    # Ray runs its workers 15 steps nicer than `ray start` (worker_niceness): on a node they
    # have to themselves that costs nothing, beside the other tests' training it starves them.
    env = run_env(RAY_AUTH_MODE="disabled", RAY_worker_niceness="0")
    subprocess.run(start, cwd=temp, env=env, check=True, capture_output=True, timeout=180)
    try:
        yield address, temp
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_sweep_runs_as_ray_tasks_on_a_running_cluster(
    ray_head: tuple[str, Path], tmp_path: Path
) -> None:
    address, temp = ray_head
    project = copy_project(tmp_path)
    sweep = [
        "python", "-m", "pipeline.sweep", "-m",
        "model.hidden_units=16,32", "train.epochs=1", "train.max_examples=1000",
        "hydra/launcher=ray_cluster", "tracking.experiment_name=ray",
    ]  # fmt: skip
    proc = run(sweep, project, RAY_ADDRESS=address, RAY_AUTH_MODE="disabled")
    assert "2 runs, 2 configurations, best first" in proc.stdout
    use_store(f"sqlite:///{project}/mlflow.db")
    found = mlflow.search_runs(experiment_names=["ray"], output_format="list")
    (parent,) = [r for r in found if r.data.tags.get("sweep") == "parent"]
    children = [r for r in found if r is not parent]
    assert len(children) == 2
    for child in children:
        assert_complete_child(child, parent.info.run_id, int(child.data.params["train.epochs"]))
    # Each job ran in a Ray worker process, not in the sweep's own.
    assert parent.data.tags["pid"] not in {c.data.tags["pid"] for c in children}
    # In the project folder and environment the nodes share: Ray's `uv run` hook (the tests
    # run under `uv run`) shipped them no copy of the project to install an environment into.
    assert not list(temp.glob("session_*/runtime_resources/working_dir_files/*"))
