"""The SLURM preset composes as documented (test_slurm.py runs it on a real cluster,
test_cluster.py runs the Ray preset on two real nodes)."""

from __future__ import annotations

import pytest

from helpers import ROOT, run

pytestmark = pytest.mark.slow  # composes Hydra's config in a process


def test_slurm_preset_composes_the_submitit_launcher() -> None:
    """Its settings reach the launcher, which is the project's (a job SLURM ends fails alone)."""
    proc = run(["python", "-m", "pipeline.sweep", "hydra/launcher=slurm", "--cfg", "hydra"], ROOT)
    launcher = proc.stdout.split("\n  launcher:\n", 1)[1]
    target = "hydra_plugins.mnist_pipeline.SlurmLauncher"
    assert f"_target_: {target}" in launcher
    assert "timeout_min: 60" in launcher and "array_parallelism: 16" in launcher
