import getpass
import hashlib
import platform
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from helpers import ROOT, run, run_env
from pipeline.tracking import provenance


def test_git_state(tmp_path: Path) -> None:
    env = run_env()
    git = ["git", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True, env=env)
    (tmp_path / "a.txt").write_text("one")
    (tmp_path / "dvc.lock").write_text("lock")
    subprocess.run([*git, "add", "-A"], check=True, env=env)
    subprocess.run([*git, "commit", "-qm", "x"], check=True, env=env)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    (tmp_path / "dvc.lock").write_text("rewritten by dvc")
    tags = provenance.git_state(tmp_path)
    assert tags == {"git_commit": head.strip(), "git_branch": "main", "git_dirty": "false"}
    (tmp_path / "a.txt").write_text("two")
    assert provenance.git_state(tmp_path)["git_dirty"] == "true"
    source = provenance.source(tmp_path, "pipeline/sweep.py")
    assert source == {
        "mlflow.source.git.commit": head.strip(),
        "mlflow.source.git.branch": "main",
        "mlflow.source.name": "pipeline/sweep.py",
        "mlflow.source.type": "LOCAL",
        "mlflow.user": getpass.getuser(),
    }


def test_provenance(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DVC_EXP_NAME", "lucky-lark")
    monkeypatch.setenv("PIPELINE_REPRODUCES", "abc123")
    (tmp_path / "uv.lock").write_text("lock")
    tags = provenance.provenance(tmp_path, {"raw.x": "abc"}, "seed: 1\n")
    assert tags["dvc_exp_name"] == "lucky-lark" and tags["reproduces"] == "abc123"
    assert tags["data.raw.x.sha256"] == "abc" and tags["git_commit"] == "none"
    assert tags["mlflow.source.name"] == "pipeline/train.py"  # not in git: no commit to name
    assert "mlflow.source.git.commit" not in tags and tags["mlflow.user"]
    assert tags["params_sha256"] == hashlib.sha256(b"seed: 1\n").hexdigest()
    assert tags["uv_lock_sha256"] == hashlib.sha256(b"lock").hexdigest()
    assert tags["env.python"] == platform.python_version()
    for pkg in ("tensorflow", "keras", "mlflow", "numpy"):
        assert tags[f"env.{pkg}"] == version(pkg)
    assert tags["env.cpu"]


def test_provenance_needs_no_mlflow() -> None:
    probe = "import sys, pipeline.tracking.provenance; print('mlflow' in sys.modules)"
    assert run([sys.executable, "-c", probe], ROOT).stdout.strip() == "False"


def test_reproduce_builds_from_source_only_what_this_checkouts_lock_builds(
    tmp_path: Path,
) -> None:
    from pipeline.tools.reproduce import source_builds

    def lock(path: Path, *packages: str) -> Path:
        path.write_text("version = 1\n" + "".join(packages))
        return path

    head = '[[package]]\nname = "{}"\nversion = "1"\nsource = {{ registry = "r" }}\n'
    wheel = head.format("numpy") + 'wheels = [{ url = "w" }]\n'
    antlr = head.format("antlr") + 'sdist = { url = "s", hash = "sha256:aa" }\n'
    evil = antlr.replace("aa", "bb")
    git = '[[package]]\nname = "tool"\nversion = "1"\nsource = { git = "https://x/tool" }\n'
    ours = lock(tmp_path / "ours.lock", wheel, antlr)
    assert source_builds(lock(tmp_path / "same.lock", wheel, antlr), ours) == []
    assert source_builds(lock(tmp_path / "evil.lock", wheel, evil, git), ours) == ["antlr", "tool"]
    assert source_builds(ours, None) == ["antlr"]
