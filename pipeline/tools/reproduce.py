"""Reproduce an MLflow run from its commit, in the environment its uv.lock pins, bit for bit.

Inputs: a run id in the project's MLflow store; the run's `git_commit` (and its uncommitted diff
when the tree was dirty), its `config.yaml` artifact, and the MNIST files (MNIST_MIRROR, else
the project's data/raw/, else the public mirrors; verified by digest either way).
The pipeline runs in the environment the commit's `uv.lock` pins: uv installs it (frozen, no dev
packages) once per lock into a cache folder named by the lock's SHA-256 (PIPELINE_ENV_CACHE, else
~/.cache/mnist-pipeline/envs), so a later reproduction from the same lock installs nothing.
`--current-env` runs it with this checkout's interpreter and packages instead.
Outputs: a new run tagged `reproduces=RUN_ID` and `reproduce.environment` (`locked` or
`current`), and a table of the environment, weights hash, data digests and test metrics,
original against reproduced. Exit 0 when weights and metrics are identical; where the
environment still differs (another CPU, another Python), those rows are named and the metrics
judged within TOLERANCE; otherwise exit 1.
Command: `uv run python -m pipeline.reproduce RUN_ID [--current-env]`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from pipeline.core.errors import PipelineError, command_parser, run_cli
from pipeline.core.paths import PARAMS_FILE, RAW_DIR, RUN_FILE, project_root
from pipeline.tracking import names, provenance

TOLERANCE = 0.002  # absolute, on every metric, when the environment differs
ENV_CACHE_VAR = "PIPELINE_ENV_CACHE"  # where locked environments are kept
ENVIRONMENT_TAG = "reproduce.environment"  # on the new run: `locked` or `current`
LOCK_TAG = "reproduce.uv_lock_sha256"  # on the new run, when `locked`: the lock it installed
LOCK_FILE = "uv.lock"
THREADS = ("train.intra_op_threads", "train.inter_op_threads")  # params shown with the env
METRICS = (
    names.TEST_ACCURACY,
    names.TEST_LOSS,
    names.MACRO_F1,
    *(names.F1_CLASS.format(c) for c in range(10)),
)


def find_run(run_id: str) -> Any:
    from pipeline.tracking import runs

    return runs.get_run(run_id, "list runs with `uv run python -m pipeline.compare`.")


def check_reproducible(run: Any, root: Path) -> str:
    """The run's commit, once it is known to be in this repository; warn about a dirty tree."""
    tags, run_id = run.data.tags, run.info.run_id
    commit = tags.get(names.SOURCE_COMMIT) or tags.get(names.GIT_COMMIT, names.NOT_IN_GIT)
    if commit == names.NOT_IN_GIT:
        raise PipelineError(f"run {run_id} has no git_commit tag: it was not made in a git repo.")
    if names.WEIGHTS_SHA256_TAG not in tags:
        raise PipelineError(f"run {run_id} records no weights_sha256, so it cannot be checked.")
    if provenance.run_git(root, "cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        raise PipelineError(
            f"commit {commit} of run {run_id} is not in the repository at {root}; "
            "fetch the branch it was made on (`git fetch --all`) and run again."
        )
    if tags.get(names.GIT_DIRTY) == "true":
        print(
            f"warning: run {run_id} was made from a dirty tree; its recorded diff is applied "
            "on top of the commit.",
            file=sys.stderr,
        )
    return commit


def env_cache() -> Path:
    """The folder of locked environments: PIPELINE_ENV_CACHE, else the user's cache folder."""
    if os.environ.get(ENV_CACHE_VAR):
        return Path(os.environ[ENV_CACHE_VAR])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mnist-pipeline" / "envs"


def locked_env(worktree: Path, commit: str) -> tuple[Path, str]:
    """The environment `commit`'s uv.lock pins, installed into the cache unless it is there:
    its folder and the lock's SHA-256. It is built under a temporary name and renamed once
    complete, so a failed install leaves nothing under the final name."""
    from filelock import FileLock

    lock = worktree / LOCK_FILE
    if not lock.is_file():
        raise PipelineError(
            f"commit {commit[:12]} has no {LOCK_FILE}, so its environment is unknown; "
            "reproduce it with --current-env."
        )
    digest = provenance.sha256_text(lock.read_text(encoding="utf-8"))
    cache = env_cache()
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / digest[:16]
    with FileLock(str(cache / f"{digest[:16]}.lock")):  # one install per lock at a time
        if (final / "bin" / "python").exists():
            print(f"reproduce: environment of {LOCK_FILE} {digest[:12]}, cached in {final}")
            return final, digest
        uv = os.environ.get("UV") or shutil.which("uv")
        if uv is None:
            raise PipelineError(
                "uv is not on PATH, so the run's locked environment cannot be installed; "
                "install it (`pip install uv`) or reproduce with --current-env."
            )
        partial = cache / f"{digest[:16]}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        print(
            f"reproduce: installing the environment of {LOCK_FILE} {digest[:12]} ...", flush=True
        )
        env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
        env["UV_PROJECT_ENVIRONMENT"] = str(partial)
        steps = (
            [uv, "venv", "--relocatable", "--quiet", str(partial)],
            [uv, "sync", "--frozen", "--no-dev", "--no-install-project", "--quiet"],
        )
        for cmd in steps:
            proc = subprocess.run(cmd, cwd=worktree, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                shutil.rmtree(partial, ignore_errors=True)
                raise PipelineError(
                    f"cannot install the environment that {LOCK_FILE} of commit {commit[:12]} "
                    f"pins (`{' '.join(cmd[1:3])}` exited {proc.returncode}: "
                    f"{proc.stderr.strip()[-600:]}). Reach the package registry (or a uv cache "
                    "holding those packages) and run again, or reproduce in this checkout's "
                    "environment with --current-env."
                )
        partial.rename(final)
        return final, digest


def rerun(run: Any, commit: str, root: Path, current_env: bool) -> tuple[str, dict[str, str]]:
    """Check out `commit` in a temporary worktree, restore the config, `dvc repro` there, in
    the environment the commit's uv.lock pins (or, with `current_env`, this one).

    Returns the id of the new run and the tags saying which environment it ran in; the
    worktree is removed whatever happens.
    """
    import mlflow

    run_id = run.info.run_id
    config_text = mlflow.artifacts.load_text(f"runs:/{run_id}/{names.CONFIG_ARTIFACT}")
    env = {k: v for k, v in os.environ.items() if k != "DVC_ROOT"}
    env["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()  # the store the run is in
    env[provenance.REPRODUCES_ENV] = run_id
    if not env.get("MNIST_MIRROR") and (root / RAW_DIR).is_dir():
        env["MNIST_MIRROR"] = str(root / RAW_DIR)  # verified by digest like any mirror
    with tempfile.TemporaryDirectory(prefix="reproduce-") as tmp:
        worktree = Path(tmp) / "worktree"
        added = provenance.run_git(root, "worktree", "add", "--detach", str(worktree), commit)
        if added.returncode != 0:
            raise PipelineError(f"git worktree add {commit} failed: {added.stderr.strip()}")
        try:
            if run.data.tags.get(names.GIT_DIRTY) == "true":
                diff = mlflow.artifacts.load_text(f"runs:/{run_id}/{names.DIFF_ARTIFACT}")
                (worktree / "run.diff").write_text(diff, encoding="utf-8")
                applied = provenance.run_git(worktree, "apply", "--allow-empty", "run.diff")
                if applied.returncode != 0:
                    raise PipelineError(f"the run's diff does not apply: {applied.stderr.strip()}")
            (worktree / PARAMS_FILE).write_text(config_text, encoding="utf-8")
            python, used = Path(sys.executable), {ENVIRONMENT_TAG: "current"}
            if not current_env:
                folder, digest = locked_env(worktree, commit)
                python, used = folder / "bin" / "python", {ENVIRONMENT_TAG: "locked"}
                used[LOCK_TAG] = digest
                env["VIRTUAL_ENV"] = str(folder)
            # The stages run `python -m pipeline...`: this environment's python comes first.
            env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
            print(f"reproduce: dvc repro at {commit[:12]} in {worktree} ({python})", flush=True)
            proc = subprocess.run([str(python), "-m", "dvc", "repro"], cwd=worktree, env=env)
            if proc.returncode != 0:
                raise PipelineError(f"`dvc repro` at commit {commit} exited {proc.returncode}.")
            new_id = json.loads((worktree / RUN_FILE).read_text(encoding="utf-8"))["run_id"]
            from pipeline.tracking import runs

            runs.set_tags(new_id, used)
            return new_id, used
        finally:
            provenance.run_git(root, "worktree", "remove", "--force", str(worktree))
            provenance.run_git(root, "worktree", "prune")


def compare(original: Any, reproduced: Any) -> tuple[list[tuple[str, Any, Any]], list[str]]:
    """Rows (what, original, reproduced), environment first, and the environment rows that
    differ."""
    a, b = original.data, reproduced.data
    env_keys = sorted(k for k in a.tags if k.startswith(names.ENV_PREFIX))
    env_rows = [(k, a.tags.get(k), b.tags.get(k)) for k in env_keys]
    env_rows += [(k, a.params.get(k), b.params.get(k)) for k in THREADS]
    env_diff = [k for k, x, y in env_rows if x != y]
    keys = sorted(k for k in a.tags if k.startswith(names.DATA_PREFIX))
    keys += [names.PARAMS_SHA256, names.WEIGHTS_SHA256_TAG]
    rows = [(k, a.tags.get(k), b.tags.get(k)) for k in keys]
    rows += [(m, a.metrics.get(m), b.metrics.get(m)) for m in METRICS]
    return env_rows + rows, env_diff


def verdict(rows: list[tuple[str, Any, Any]], env_diff: list[str]) -> tuple[list[str], bool]:
    """Lines of the table and whether the reproduction passes."""
    width = max(len(r[0]) for r in rows)
    lines, ok = [f"{'':{width}}  {'original':<22}  {'reproduced':<22}"], True
    for what, x, y in rows:
        same = x == y
        if what.startswith(names.ENV_PREFIX) or what in THREADS:
            state = "same" if same else "differs"
        elif not same and env_diff and what in METRICS and None not in (x, y):
            state = "within tolerance" if abs(x - y) <= TOLERANCE else "DIFFERENT"
        elif not same and env_diff and what == names.WEIGHTS_SHA256_TAG:
            state = "different (environment differs)"
        else:
            state = "identical" if same else "DIFFERENT"
        ok &= state != "DIFFERENT"
        lines.append(f"{what.ljust(width)}  {_short(x):<22}  {_short(y):<22}  {state}")
    return lines, ok


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6f}"
    return "-" if value is None else str(value)[:20]


def main(argv: list[str]) -> None:
    parser = command_parser("reproduce", __doc__)
    parser.add_argument("run_id")
    parser.add_argument(
        "--current-env",
        action="store_true",
        help="run with this checkout's interpreter and packages, not the run's uv.lock",
    )
    args = parser.parse_args(argv)

    root = project_root()
    from pipeline.tracking import store

    store.connect(store.configured_uri())
    original = find_run(args.run_id)
    commit = check_reproducible(original, root)
    new_id, used = rerun(original, commit, root, args.current_env)
    reproduced = find_run(new_id)
    rows, env_diff = compare(original, reproduced)
    lines, ok = verdict(rows, env_diff)
    print(
        f"\nrun {original.info.run_id} (commit {commit[:12]}) reproduced as "
        f"{reproduced.info.run_id} in the {used[ENVIRONMENT_TAG]} environment\n"
    )
    print("\n".join(lines))
    if env_diff:
        print(f"\nenvironment differs ({', '.join(env_diff)}); metrics judged within "
              f"+/-{TOLERANCE}.")  # fmt: skip
    if not ok:
        print("\nnot reproduced: see the rows marked DIFFERENT.", file=sys.stderr)
        sys.exit(1)
    print("\nreproduced: " + ("within tolerance." if env_diff else "bit for bit."))


def cli() -> None:
    run_cli(main, sys.argv[1:])


if __name__ == "__main__":
    cli()
