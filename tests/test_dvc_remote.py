"""Beyond one machine: a DVC remote holds the data, the model and the figures; a fresh clone
gets them all, and a job on another machine takes the prepared data from it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers import copy_project, run
from pipeline.core.config import params_yaml_text

pytestmark = pytest.mark.slow  # real training and several DVC processes

QUICK = ["train.max_examples=2000", "train.epochs=2"]


def test_dvc_remote_restores_everything_on_a_fresh_clone(tmp_path: Path) -> None:
    first = copy_project(tmp_path / "first")
    remote = tmp_path / "remote"
    (first / "params.yaml").write_text(params_yaml_text(QUICK))
    run(["dvc", "remote", "modify", "--local", "storage", "url", str(remote)], first)
    run(["dvc", "repro"], first)
    run(["dvc", "push"], first)
    run(["git", "add", "-A"], first)
    run(["git", "commit", "-qm", "trained"], first)

    second = tmp_path / "second"
    run(["git", "clone", "-q", str(first), str(second)], tmp_path)
    run(["dvc", "remote", "modify", "--local", "storage", "url", str(remote)], second)
    run(["dvc", "pull"], second)
    for rel in (
        "data/raw",
        "data/processed/manifest.json",
        "data/processed/train-00000.npy",
        "models/model.keras",
        "reports/metrics.json",
    ):
        assert (second / rel).exists(), rel
    assert (second / "models/model.keras").read_bytes() == (
        first / "models/model.keras"
    ).read_bytes()
    status = run(["dvc", "repro"], second).stdout
    assert "Running stage" not in status and "up to date" in status

    # A job on another machine gets the prepared data from the remote, not from a download.
    shutil.rmtree(second / "data/processed")
    shutil.rmtree(second / ".dvc/cache")
    pull = "from pathlib import Path; from pipeline.core.data import prepared; "
    pull += "print(len(prepared(Path.cwd(), 'train').labels()))"
    proc = run(["python", "-c", pull], second, MNIST_MIRROR=str(tmp_path / "no-mirror"))
    assert proc.stdout.strip().splitlines()[-1] == "54000"
    assert (second / "data/processed/train-00000.npy").exists()
