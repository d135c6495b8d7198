"""`pipeline.reproduce` on a small real run (1 epoch, 2,000 training digits) in a project copy."""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pytest
import yaml

from conftest import copy_project, run, use_store


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A project copy with one run made from a clean commit; yields (root, run id)."""
    root = copy_project(tmp_path_factory.mktemp("reproduce"))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"].update(epochs=1, max_examples=2000)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "commit", "-qam", "a small run"], root)
    run(["dvc", "repro"], root)
    use_store(f"sqlite:///{root}/mlflow.db")
    yield root, json.loads((root / "models/run.json").read_text())["run_id"]


def reproduce(root: Path, run_id: str):
    return run(["python", "-m", "pipeline.reproduce", run_id], root, check=False)


def worktrees(root: Path) -> int:
    return run(["git", "worktree", "list", "--porcelain"], root).stdout.count("worktree ")


def test_every_run_records_its_provenance(made: tuple[Path, str]) -> None:
    root, run_id = made
    tags = mlflow.get_run(run_id).data.tags
    head = run(["git", "rev-parse", "HEAD"], root).stdout.strip()
    assert tags["git_commit"] == head and tags["git_dirty"] == "false"
    assert tags["git_branch"] == "main"
    for key in (
        "params_sha256",
        "uv_lock_sha256",
        "weights_sha256",
        "data.raw.train_images.sha256",
        "data.processed.train.sha256",
        "env.tensorflow",
        "env.keras",
        "env.mlflow",
        "env.numpy",
        "env.python",
        "env.cpu",
    ):
        assert tags[key], key
    assert tags["data.raw.train_images.sha256"].startswith("ba891046")
    config = mlflow.artifacts.load_text(f"runs:/{run_id}/config.yaml")
    assert config == (root / "params.yaml").read_text()
    params = mlflow.get_run(run_id).data.params
    assert params["train.intra_op_threads"] == "2" and params["train.inter_op_threads"] == "2"


def test_reproduces_bit_for_bit(made: tuple[Path, str]) -> None:
    root, run_id = made
    proc = reproduce(root, run_id)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "reproduced: bit for bit." in proc.stdout
    weights = next(line for line in proc.stdout.splitlines() if line.startswith("weights_sha256"))
    assert weights.endswith("identical")
    (copy,) = mlflow.search_runs(
        experiment_names=["mnist"],
        filter_string=f"tags.reproduces = '{run_id}'",
        output_format="list",
    )
    original = mlflow.get_run(run_id)
    assert copy.data.tags["weights_sha256"] == original.data.tags["weights_sha256"]
    assert copy.data.metrics["test_accuracy"] == original.data.metrics["test_accuracy"]
    assert copy.data.tags["git_commit"] == original.data.tags["git_commit"]
    assert worktrees(root) == 1


@contextmanager
def tampered(run_id: str, tag: str, value: str) -> Iterator[None]:
    """Change one tag of a run for the duration of the block."""
    client = mlflow.MlflowClient()
    real = mlflow.get_run(run_id).data.tags[tag]
    client.set_tag(run_id, tag, value)
    try:
        yield
    finally:
        client.set_tag(run_id, tag, real)


def test_tampered_weights_hash_is_reported_different(made: tuple[Path, str]) -> None:
    root, run_id = made
    with tampered(run_id, "weights_sha256", "0" * 64):
        proc = reproduce(root, run_id)
    assert proc.returncode == 1
    assert "not reproduced" in proc.stderr
    weights = next(line for line in proc.stdout.splitlines() if line.startswith("weights_sha256"))
    assert weights.endswith("DIFFERENT")
    assert worktrees(root) == 1


def test_unknown_run_id(made: tuple[Path, str]) -> None:
    root, _ = made
    proc = reproduce(root, "0123456789abcdef0123456789abcdef")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: no run '0123456789abcdef0123456789abcdef' in the MLflow")
    assert worktrees(root) == 1


def test_missing_commit(made: tuple[Path, str]) -> None:
    root, run_id = made
    with tampered(run_id, "git_commit", "deadbeef" * 5):
        proc = reproduce(root, run_id)
    assert proc.returncode == 1
    assert f"commit {'deadbeef' * 5} of run {run_id} is not in the repository" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert worktrees(root) == 1


def test_verdict_uses_the_tolerance_only_when_the_environment_differs() -> None:
    from pipeline.reproduce import TOLERANCE, verdict

    rows = [("weights_sha256", "aa", "bb"), ("test_accuracy", 0.9750, 0.9750 + TOLERANCE / 2)]
    lines, ok = verdict(rows, env_diff=[])
    assert not ok and lines[1].endswith("DIFFERENT") and lines[2].endswith("DIFFERENT")
    lines, ok = verdict(rows, env_diff=["env.tensorflow"])
    assert ok
    assert lines[1].endswith("different (environment differs)")
    assert lines[2].endswith("within tolerance")
    lines, ok = verdict([("test_accuracy", 0.97, 0.97 + 2 * TOLERANCE)], ["env.cpu"])
    assert not ok and lines[1].endswith("DIFFERENT")
