"""`pipeline.reproduce` on a small real run (1 epoch, 2,000 training digits) in a project copy."""

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from hashlib import sha256
from pathlib import Path

import mlflow
import pytest
import yaml

from helpers import copy_project, run, started_until, use_store, within

pytestmark = pytest.mark.slow  # real reproductions: git worktrees, locked environments, training


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


@pytest.fixture(scope="module")
def env_cache(made: tuple[Path, str]) -> Path:
    """The locked environments of this module's reproductions (installed once per lock)."""
    return made[0].parent / "envs"


def reproduce(root: Path, run_id: str, *args: str, **env: str):
    env = {"PIPELINE_ENV_CACHE": str(root.parent / "envs"), **env}  # see env_cache
    return run(["python", "-m", "pipeline.reproduce", run_id, *args], root, check=False, **env)


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
    assert "reproduced: bit for bit." in proc.stdout and "environment of uv.lock" in proc.stdout
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


def test_a_run_reproduces_in_its_own_locked_environment_after_the_lock_moved(
    made: tuple[Path, str], env_cache: Path
) -> None:
    """tqdm, which the pipeline imports, moves to another version in a later commit; the run
    reproduces in the environment of its own commit's lock, bit for bit. A reproduction from a
    lock already installed installs nothing; with the run's weights hash tampered, it is
    reported DIFFERENT."""
    root, run_id = made
    old_lock = (root / "uv.lock").read_text()
    before = version_in(None, "tqdm")
    run(["uv", "lock", "--upgrade-package", "tqdm==4.67.1", "--quiet"], root)
    assert (root / "uv.lock").read_text() != old_lock
    run(["git", "commit", "-qam", "tqdm 4.67.1"], root)

    proc = reproduce(root, run_id)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "reproduced: bit for bit." in proc.stdout and "in the locked environment" in proc.stdout
    for row in ("env.tensorflow", "env.keras", "env.numpy", "env.mlflow", "env.python",
                "env.cpu", "train.intra_op_threads"):  # fmt: skip
        line = next(x for x in proc.stdout.splitlines() if x.startswith(row))
        assert line.endswith("same"), line
    copy = reproductions(run_id, "locked")[0]  # the newest
    assert copy.data.tags["reproduce.uv_lock_sha256"] == sha256(old_lock.encode()).hexdigest()
    (folder,) = [p for p in env_cache.iterdir() if p.is_dir()]
    assert version_in(folder, "tqdm") == before != "4.67.1"

    with tampered(run_id, "weights_sha256", "0" * 64):
        again = reproduce(root, run_id)
    assert "installing" not in again.stdout and "cached" in again.stdout
    assert [p for p in env_cache.iterdir() if p.is_dir()] == [folder]
    assert again.returncode == 1 and "not reproduced" in again.stderr
    weights = next(line for line in again.stdout.splitlines() if line.startswith("weights_sha256"))
    assert weights.endswith("DIFFERENT")
    assert worktrees(root) == 1


def test_current_env_runs_in_this_checkouts_environment(made: tuple[Path, str]) -> None:
    root, run_id = made
    proc = reproduce(root, run_id, "--current-env")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "in the current environment" in proc.stdout and "bit for bit" in proc.stdout
    assert "installing" not in proc.stdout
    assert len(reproductions(run_id, "current")) >= 1


def test_a_lock_that_cannot_be_installed_stops_cleanly(
    made: tuple[Path, str], tmp_path: Path
) -> None:
    """No registry and nothing in uv's cache: the error says so and suggests --current-env;
    no worktree, no environment under its final name, no new run."""
    root, run_id = made
    envs = tmp_path / "envs"
    runs_before = len(mlflow.search_runs(experiment_names=["mnist"], output_format="list"))
    proc = reproduce(
        root,
        run_id,
        PIPELINE_ENV_CACHE=str(envs),
        UV_OFFLINE="1",
        UV_CACHE_DIR=str(tmp_path / "uv"),
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: cannot install the environment that uv.lock of commit")
    assert "--current-env" in proc.stderr and "Traceback" not in proc.stderr
    assert [p.name for p in envs.iterdir() if p.is_dir()] == []
    assert worktrees(root) == 1
    assert len(mlflow.search_runs(experiment_names=["mnist"], output_format="list")) == runs_before


def reproductions(run_id: str, environment: str) -> list:
    return mlflow.search_runs(
        experiment_names=["mnist"],
        filter_string=f"tags.reproduces = '{run_id}' and "
        f"tags.`reproduce.environment` = '{environment}'",
        output_format="list",
    )


def version_in(env: Path | None, package: str) -> str:
    """`package`'s version in the environment at `env` (None: the one running the tests)."""
    from importlib.metadata import version

    if env is None:
        return version(package)
    code = f"from importlib.metadata import version; print(version({package!r}))"
    return run([str(env / "bin" / "python"), "-c", code], env).stdout.strip()


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


def test_unknown_run_id(made: tuple[Path, str]) -> None:
    root, _ = made
    proc = reproduce(root, "0123456789abcdef0123456789abcdef")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: no run '0123456789abcdef0123456789abcdef' in the MLflow")
    assert worktrees(root) == 1


def test_missing_commit(made: tuple[Path, str]) -> None:
    root, run_id = made
    with tampered(run_id, "mlflow.source.git.commit", "deadbeef" * 5):
        proc = reproduce(root, run_id)
    assert proc.returncode == 1
    assert f"commit {'deadbeef' * 5} of run {run_id} is not in the repository" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert worktrees(root) == 1


def test_verdict_uses_the_tolerance_only_when_the_environment_differs() -> None:
    from pipeline.tools.reproduce import TOLERANCE, verdict

    rows = [("weights_sha256", "aa", "bb"), ("test_accuracy", 0.9750, 0.9750 + TOLERANCE / 2)]
    lines, ok = verdict(rows, env_diff=[])
    assert not ok and lines[1].endswith("DIFFERENT") and lines[2].endswith("DIFFERENT")
    lines, ok = verdict(rows, env_diff=["env.tensorflow"])
    assert ok
    assert lines[1].endswith("different (environment differs)")
    assert lines[2].endswith("within tolerance")
    lines, ok = verdict([("test_accuracy", 0.97, 0.97 + 2 * TOLERANCE)], ["env.cpu"])
    assert not ok and lines[1].endswith("DIFFERENT")


def test_a_commit_on_no_branch_or_tag_is_refused(made: tuple[Path, str]) -> None:
    root, run_id = made
    tree = run(["git", "rev-parse", "HEAD^{tree}"], root).stdout.strip()
    loose = run(["git", "commit-tree", tree, "-m", "on no branch"], root).stdout.strip()
    with tampered(run_id, "mlflow.source.git.commit", loose):
        proc = reproduce(root, run_id)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"commit {loose[:12]} of run {run_id} is on no branch or tag" in proc.stderr
    assert worktrees(root) == 1


def test_a_dirty_run_is_refused_unless_its_diff_is_asked_for(
    made: tuple[Path, str], tmp_path: Path
) -> None:
    root, run_id = made
    diff = (
        "diff --git a/pipeline/core/model.py b/pipeline/core/model.py\n"
        "--- a/pipeline/core/model.py\n+++ b/pipeline/core/model.py\n"
        "@@ -1 +1 @@\n-no such line\n+import os; os.system('touch /tmp/owned')\n"
    )
    (tmp_path / "uncommitted.diff").write_text(diff)
    mlflow.MlflowClient().log_artifact(run_id, str(tmp_path / "uncommitted.diff"))
    with tampered(run_id, "git_dirty", "true"):
        refused = reproduce(root, run_id)
        applied = reproduce(root, run_id, "--apply-diff", "--current-env")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    size = len(diff.encode())
    assert f"diff ({size} bytes changing 1 files: pipeline/core/model.py)" in refused.stderr
    assert "--apply-diff" in refused.stderr
    assert applied.returncode == 1 and "Traceback" not in applied.stderr
    assert "applying the run's uncommitted diff" in applied.stdout
    assert "the run's diff does not apply" in applied.stderr  # it was tried, not run
    assert worktrees(root) == 1


@pytest.mark.parametrize("stop", ["timeout", "SIGTERM"])
def test_a_stopped_reproduction_ends_its_processes_and_removes_its_worktree(
    made: tuple[Path, str], stop: str
) -> None:
    root, run_id = made
    cmd = [sys.executable, "-m", "pipeline.reproduce", run_id, "--current-env"]
    if stop == "timeout":
        cmd += ["--timeout", "8"]
    proc, line = started_until(
        cmd,
        root,
        "reproduce: dvc repro at",
        stderr=subprocess.PIPE,
        PIPELINE_ENV_CACHE=str(root.parent / "envs"),
    )
    worktree = line.split(" in ", 1)[1].split(" (", 1)[0]

    assert worktrees(root) == 2  # made before the line is printed
    if stop == "SIGTERM":

        def dvc_running() -> str:
            """The reproduction's first line of DVC running a stage ('' if it ended first)."""
            assert proc.stdout is not None
            return next((ln for ln in proc.stdout if ln.startswith("Running stage")), "")

        assert within(120, dvc_running).startswith("Running stage")
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "Traceback" not in err, err
    assert ("did not finish in 8 s" if stop == "timeout" else "stopped (received SIGTERM)") in err
    assert worktrees(root) == 1 and not Path(worktree).exists()
    left = subprocess.run(["pgrep", "-f", worktree], capture_output=True, text=True).stdout
    assert left == "", f"processes left in {worktree}: {left}"
