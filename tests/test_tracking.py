import hashlib
import platform
import signal
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import mlflow
import pytest

from conftest import ROOT, run_env
from pipeline import tracking
from pipeline.tracking import use_store


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh project root with its own sqlite store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    tracking.setup("tests")
    return tmp_path


def test_store_is_sqlite_and_mlruns_at_the_root(store: Path) -> None:
    assert mlflow.get_tracking_uri() == f"sqlite:///{store}/mlflow.db"
    experiment = mlflow.get_experiment_by_name("tests")
    assert experiment.artifact_location == (store / "mlruns").as_uri()
    assert (store / "mlflow.db").is_file()
    assert tracking.setup("tests") == experiment.experiment_id


def test_user_tracking_uri_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri(tmp_path) == "http://127.0.0.1:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking.tracking_uri(tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"


def test_finished_failed_and_killed(store: Path) -> None:
    with tracking.tracked_run(run_name="ok") as ok:
        mlflow.log_metric("m", 1.0)
    with pytest.raises(ValueError), tracking.tracked_run(run_name="boom") as failed:
        raise ValueError("bad things")
    with pytest.raises(KeyboardInterrupt), tracking.tracked_run(run_name="ctrl-c") as killed:
        raise KeyboardInterrupt
    status = {r: mlflow.get_run(r.info.run_id) for r in (ok, failed, killed)}
    assert status[ok].info.status == "FINISHED"
    assert status[failed].info.status == "FAILED"
    assert status[failed].data.tags[tracking.FAILURE_TAG] == "ValueError: bad things"
    assert status[killed].info.status == "KILLED"


def test_sigterm_marks_the_run_killed(tmp_path: Path) -> None:
    script = (
        "import time, mlflow\n"
        "from pipeline import tracking\n"
        "tracking.setup('tests')\n"
        "with tracking.tracked_run(run_name='long') as run:\n"
        "    print(run.info.run_id, flush=True)\n"
        "    time.sleep(60)\n"
    )
    env = run_env(PYTHONPATH=str(ROOT), DVC_ROOT=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_id = proc.stdout.readline().strip()
    assert run_id, proc.stderr.read()
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) != 0
    use_store(f"sqlite:///{tmp_path}/mlflow.db")
    run = mlflow.get_run(run_id)
    assert run.info.status == "KILLED"
    assert "SIGTERM" in run.data.tags[tracking.FAILURE_TAG]


def test_run_name_and_flatten(default_config) -> None:
    assert tracking.run_name(default_config) == "mlp-h128-e5"
    flat = tracking.flatten(default_config.to_dict())
    assert flat["model.hidden_units"] == 128 and flat["train.epochs"] == 5
    assert flat["data.files.train_images.sha256"].startswith("ba891046")


def test_git_tags(tmp_path: Path) -> None:
    env = run_env()
    git = ["git", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True, env=env)
    (tmp_path / "a.txt").write_text("one")
    (tmp_path / "dvc.lock").write_text("lock")
    subprocess.run([*git, "add", "-A"], check=True, env=env)
    subprocess.run([*git, "commit", "-qm", "x"], check=True, env=env)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    (tmp_path / "dvc.lock").write_text("rewritten by dvc")
    tags = tracking.git_tags(tmp_path)
    assert tags == {"git_commit": head.strip(), "git_branch": "main", "git_dirty": "false"}
    (tmp_path / "a.txt").write_text("two")
    assert tracking.git_tags(tmp_path)["git_dirty"] == "true"


def test_provenance_tags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DVC_EXP_NAME", "lucky-lark")
    monkeypatch.setenv("PIPELINE_REPRODUCES", "abc123")
    (tmp_path / "uv.lock").write_text("lock")
    tags = tracking.provenance_tags(tmp_path, {"raw.x": "abc"}, "seed: 1\n")
    assert tags["dvc_exp_name"] == "lucky-lark" and tags["reproduces"] == "abc123"
    assert tags["data.raw.x.sha256"] == "abc" and tags["git_commit"] == "none"
    assert tags["params_sha256"] == hashlib.sha256(b"seed: 1\n").hexdigest()
    assert tags["uv_lock_sha256"] == hashlib.sha256(b"lock").hexdigest()
    assert tags["env.python"] == platform.python_version()
    for pkg in ("tensorflow", "keras", "mlflow", "numpy"):
        assert tags[f"env.{pkg}"] == version(pkg)
    assert tags["env.cpu"]


def test_model_run_logs_config_and_the_diff_of_a_dirty_tree(store: Path) -> None:
    env = run_env()
    git = ["git", "-C", str(store)]
    subprocess.run([*git, "init", "-q"], check=True, env=env)
    (store / "code.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "code.py"], check=True, env=env)
    subprocess.run([*git, "commit", "-qm", "x"], check=True, env=env)
    with tracking.model_run(store, "seed: 1\n", {}, run_name="clean") as clean:
        pass
    (store / "code.py").write_text("x = 2\n")
    with tracking.model_run(store, "seed: 2\n", {}, run_name="dirty") as dirty:
        pass
    client = mlflow.MlflowClient()
    assert [a.path for a in client.list_artifacts(clean.info.run_id)] == ["config.yaml"]
    assert mlflow.get_run(dirty.info.run_id).data.tags["git_dirty"] == "true"
    diff = mlflow.artifacts.load_text(f"runs:/{dirty.info.run_id}/uncommitted.diff")
    assert "-x = 1" in diff and "+x = 2" in diff
    config = mlflow.artifacts.load_text(f"runs:/{dirty.info.run_id}/config.yaml")
    assert config == "seed: 2\n"


def test_read_run_id_errors(store: Path, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="run.json not found"):
        tracking.read_run(tmp_path / "run.json")
    (tmp_path / "run.json").write_text('{"run_id": "0123456789abcdef", "experiment_id": "1"}')
    with pytest.raises(
        Exception, match="no run '0123456789abcdef' in the MLflow store .*run.json names it"
    ):
        tracking.read_run(tmp_path / "run.json")
