"""What a result was made from: git state, digests, library versions, processor. No MLflow here.

Plain functions returning plain strings; tracking/runs.py records them as run tags,
tools/reproduce.py compares them. The tag names they produce live in core/names.py.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import platform
import subprocess
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path

from pipeline.core import names
from pipeline.core.data import sha256_file

ENV_PACKAGES = ("tensorflow", "keras", "mlflow", "numpy")
REPRODUCES_ENV = "PIPELINE_REPRODUCES"  # set by reproduce.py for the run it makes
DVC_ENV = ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV")  # set by `dvc exp run`

# Not code: DVC rewrites dvc.lock and the committed metrics and plot data in reports/ while the
# pipeline runs, and `dvc exp run -S` rewrites params.yaml, which every run records whole
# (config.yaml, params_sha256).
NOT_CODE = (":!dvc.lock", ":!params.yaml", ":!reports")


def run_git(root: Path, *args: str) -> subprocess.CompletedProcess:
    """`git -C root ARGS`, its exit code and output kept (exit 127 when git is missing)."""
    try:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=300
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return subprocess.CompletedProcess(["git", *args], 127, "", str(exc))


def git(root: Path, *args: str) -> str | None:
    """`git -C root ARGS`'s output, or None when git fails or is missing."""
    done = run_git(root, *args)
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(root: Path) -> dict[str, str]:
    """Commit, branch and dirty flag of the code at `root` (dvc.lock and params.yaml aside)."""
    commit = git(root, "rev-parse", "HEAD")
    if commit is None:
        return {names.GIT_COMMIT: names.NOT_IN_GIT}
    status = git(root, "status", "--porcelain", "--untracked-files=no", "--", ".", *NOT_CODE)
    return {
        names.GIT_COMMIT: commit,
        names.GIT_BRANCH: git(root, "rev-parse", "--abbrev-ref", "HEAD") or "",
        names.GIT_DIRTY: str(bool(status)).lower(),
    }


def source(root: Path, entry_point: str, state: Mapping[str, str] | None = None) -> dict[str, str]:
    """MLflow's standard source tags: the commit and branch of the code at `root` (its
    `git_state`, when the caller has it), the entry point that made the run, its type and the
    user."""
    state = git_state(root) if state is None else state
    tags = {names.SOURCE_NAME: entry_point, names.SOURCE_TYPE: "LOCAL", names.USER: _user()}
    if state[names.GIT_COMMIT] != names.NOT_IN_GIT:
        tags[names.SOURCE_COMMIT] = state[names.GIT_COMMIT]
        tags[names.SOURCE_BRANCH] = state[names.GIT_BRANCH]
    return tags


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container's uid without a name
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


def uncommitted_diff(root: Path) -> str:
    """The tracked changes against HEAD (dvc.lock and params.yaml aside), as `git apply`
    takes them."""
    return (git(root, "diff", "HEAD", "--binary", "--", ".", *NOT_CODE) or "") + "\n"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, str]:
    """What else the numbers depend on: interpreter, library versions, processor."""
    env = {
        f"{names.ENV_PREFIX}python": platform.python_version(),
        f"{names.ENV_PREFIX}cpu": cpu_model(),
    }
    env.update({f"{names.ENV_PREFIX}{pkg}": version(pkg) for pkg in ENV_PACKAGES})
    return env


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def provenance(
    code_dir: Path,
    data_digests: Mapping[str, str],
    config_text: str,
    entry_point: str = "pipeline/train.py",
    state: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Everything that says exactly what a run was made from, as tag name -> value.

    Git state of `code_dir` (or `state`, the sweep's, for a copy of its code shipped to a job:
    the copy has no git), also as MLflow's source tags, with `entry_point` and the user; the
    DVC experiment, the run it reproduces, the SHA-256 of the resolved config, of uv.lock and of
    each data file, and the environment.
    """
    state = dict(git_state(code_dir) if state is None else state)
    tags = {**state, **source(code_dir, entry_point, state)}
    tags[names.PARAMS_SHA256] = sha256_text(config_text)
    lock = code_dir / "uv.lock"
    if lock.is_file():
        tags[names.UV_LOCK_SHA256] = sha256_file(lock)
    tags.update({f"{names.DATA_PREFIX}{name}.sha256": d for name, d in data_digests.items()})
    tags.update({var.lower(): os.environ[var] for var in DVC_ENV if os.environ.get(var)})
    if os.environ.get(REPRODUCES_ENV):
        tags[names.REPRODUCES] = os.environ[REPRODUCES_ENV]
    tags.update(environment())
    return tags
