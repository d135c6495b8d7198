"""Reproduce an MLflow run from its commit, in the environment its uv.lock pins, bit for bit.

Inputs: a run id in the project's MLflow store; the run's `git_commit` (and its uncommitted diff
when the tree was dirty), its `config.yaml` artifact, and the dataset's files (DATA_MIRROR or
MNIST_MIRROR, else the project's data/raw/, else the public mirrors; verified by digest either
way).
The pipeline runs in the environment the commit's `uv.lock` pins: uv installs it (frozen, no dev
packages) once per lock into a cache folder named by the lock's SHA-256 (PIPELINE_ENV_CACHE, else
~/.cache/mnist-pipeline/envs), so a later reproduction from the same lock installs nothing.
`--current-env` runs it with this checkout's interpreter and packages instead.
Only what the repository vouches for runs: the commit must be on a branch or tag of this
repository; a run made from a dirty tree is refused unless `--apply-diff` (its recorded diff,
whose files are listed, is then applied on top of the commit); packages are installed from
wheels only unless `--allow-build`. The install and `dvc repro` stop after `--timeout` seconds;
on a timeout, SIGTERM or Ctrl-C the child processes are ended and the worktree removed.
Outputs: a new run tagged `reproduces=RUN_ID` and `reproduce.environment` (`locked` or
`current`), and a table of the environment, weights hash, data digests and test metrics,
original against reproduced. Exit 0 when weights and metrics are identical; where the
environment still differs (another CPU, another Python), those rows are named and the metrics
judged within TOLERANCE; otherwise exit 1.
Command: `uv run python -m pipeline.reproduce RUN_ID [--current-env] [--apply-diff]`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from pipeline.core import names
from pipeline.core.errors import PipelineError, command_parser, raise_interrupt, run_cli
from pipeline.core.paths import PARAMS_FILE, RAW_DIR, RUN_FILE, project_root
from pipeline.tracking import provenance

TOLERANCE = 0.002  # absolute, on every metric, when the environment differs
TIMEOUT = 3600.0  # seconds each for the install and `dvc repro`, unless --timeout says
ENV_CACHE_VAR = "PIPELINE_ENV_CACHE"  # where locked environments are kept
ENVIRONMENT_TAG = "reproduce.environment"  # on the new run: `locked` or `current`
LOCK_TAG = "reproduce.uv_lock_sha256"  # on the new run, when `locked`: the lock it installed
LOCK_FILE = "uv.lock"
THREADS = ("train.intra_op_threads", "train.inter_op_threads")  # params shown with the env
SCORES = (names.TEST_ACCURACY, names.TEST_LOSS, names.MACRO_F1)  # then each class's F1


def compared_metrics(original: Any) -> list[str]:
    """The scores compared: the overall ones, then the F1 of each class the original run has."""
    per_class = sorted(
        (k for k in original.data.metrics if k.startswith(names.F1_CLASS.format(""))),
        key=lambda k: int(k.rsplit("_", 1)[1]),
    )
    return [*SCORES, *per_class]


def find_run(run_id: str) -> Any:
    from pipeline.tracking import runs

    return runs.get_run(run_id, "list runs with `uv run python -m pipeline.compare`.")


def check_reproducible(run: Any, root: Path, apply_diff: bool = False) -> str:
    """The run's commit, once it is known to be on a branch or tag of this repository; a run
    from a dirty tree only with `apply_diff`, and then saying what is applied."""
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
    refs = provenance.git(
        root, "for-each-ref", "--contains", commit, "--format=%(refname:short)",
        "refs/heads", "refs/tags", "refs/remotes",
    )  # fmt: skip
    if not refs:
        raise PipelineError(
            f"commit {commit[:12]} of run {run_id} is on no branch or tag of the repository at "
            f"{root}; only commits the repository keeps on a branch or tag are run. Fetch or "
            "create the branch it belongs to and run again."
        )
    if tags.get(names.GIT_DIRTY) == "true":
        diff = _load_diff(run_id)
        files = diff_files(diff)
        about = (
            f"{len(diff.encode())} bytes changing {len(files)} files: "
            f"{', '.join(files[:10])}{' ...' if len(files) > 10 else ''}"
        )
        if not apply_diff:
            raise PipelineError(
                f"run {run_id} was made from a tree with uncommitted changes; its recorded "
                f"diff ({about}) would be applied and run. Read it (MLflow artifact "
                f"{names.DIFF_ARTIFACT}) and rerun with --apply-diff if you trust it."
            )
        print(f"reproduce: applying the run's uncommitted diff on {commit[:12]}: {about}")
    return commit


def _load_diff(run_id: str) -> str:
    import mlflow

    try:
        return mlflow.artifacts.load_text(f"runs:/{run_id}/{names.DIFF_ARTIFACT}")
    except Exception as exc:  # noqa: BLE001 - any store error: the run is not reproducible
        raise PipelineError(
            f"run {run_id} was made from a dirty tree but its {names.DIFF_ARTIFACT} cannot be "
            f"read ({exc}); it cannot be reproduced."
        ) from exc


def diff_files(diff: str) -> list[str]:
    """The files a unified git diff changes, in order."""
    found = []
    for line in diff.splitlines():
        if line.startswith("diff --git "):
            name = line.split(" b/", 1)[-1]
            if name not in found:
                found.append(name)
    return found


def env_cache() -> Path:
    """The folder of locked environments: PIPELINE_ENV_CACHE, else the user's cache folder."""
    if os.environ.get(ENV_CACHE_VAR):
        return Path(os.environ[ENV_CACHE_VAR])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mnist-pipeline" / "envs"


def locked_env(
    worktree: Path, commit: str, allow_build: bool = False, timeout: float | None = None
) -> tuple[Path, str]:
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
        # No bytecode compiled at install (25 s for all the packages' modules): the run
        # compiles what it imports, and keeps it there (`rerun`).
        sync = [uv, "sync", "--frozen", "--no-dev", "--no-install-project", "--quiet"]
        sync.append("--no-compile-bytecode")
        if not allow_build:  # no build script runs but those this checkout's lock already runs
            here = project_root() / LOCK_FILE
            for name in source_builds(lock, here if here.is_file() else None):
                sync += ["--no-build-package", name]
        steps = ([uv, "venv", "--relocatable", "--quiet", str(partial)], sync)
        for cmd in steps:
            try:
                proc = child(cmd, worktree, env, timeout, capture=True)
            except BaseException:
                shutil.rmtree(partial, ignore_errors=True)
                raise
            if proc.returncode != 0:
                shutil.rmtree(partial, ignore_errors=True)
                raise PipelineError(
                    f"cannot install the environment that {LOCK_FILE} of commit {commit[:12]} "
                    f"pins (`{' '.join(cmd[1:3])}` exited {proc.returncode}: "
                    f"{proc.stderr.strip()[-600:]}). Reach the package registry (or a uv cache "
                    "holding those packages) and run again (--allow-build if a package has no "
                    "wheel), or reproduce in this checkout's environment with --current-env."
                )
        partial.rename(final)
        return final, digest


def source_builds(lock: Path, trusted: Path | None) -> list[str]:
    """The packages of `lock` that uv could build from source (an sdist, a git or path source),
    but those locked identically (name, version, source, sdist hash) in `trusted`, the lock of
    the checkout the user runs: its own installs already build them."""
    import tomllib

    def buildable(path: Path) -> dict[str, tuple]:
        packages = tomllib.loads(path.read_text(encoding="utf-8")).get("package", [])
        return {
            p["name"]: (
                p.get("version"),
                json.dumps(p.get("source"), sort_keys=True),
                json.dumps(p.get("sdist"), sort_keys=True),
            )
            for p in packages
            if "sdist" in p or not {"registry", "virtual", "editable"} & set(p.get("source", {}))
        }

    try:
        theirs = buildable(lock)
        ours = buildable(trusted) if trusted else {}
    except (OSError, ValueError) as exc:
        raise PipelineError(f"cannot read {lock}: {exc}; it is not a uv lock file.") from exc
    return sorted(name for name, pin in theirs.items() if ours.get(name) != pin)


def child(
    cmd: list[str], cwd: Path, env: dict[str, str], timeout: float | None, capture: bool = False
) -> subprocess.CompletedProcess:
    """Run `cmd` in a process group of its own; on a timeout, SIGTERM or Ctrl-C the whole group
    (dvc's stages included) is ended before this returns or raises."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _end_group(proc)
        raise PipelineError(
            f"`{' '.join(Path(c).name if i == 0 else c for i, c in enumerate(cmd[:4]))}` did "
            f"not finish in {timeout:g} s and was stopped; raise --timeout to give it longer."
        ) from None
    except BaseException:
        _end_group(proc)
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _end_group(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM to `proc`'s process group (runs close KILLED), SIGKILL after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.communicate(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def rerun(
    run: Any,
    commit: str,
    root: Path,
    current_env: bool,
    allow_build: bool = False,
    timeout: float | None = None,
) -> tuple[str, dict[str, str]]:
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
    if (root / RAW_DIR).is_dir():  # verified by digest like any mirror; older commits read
        for var in ("DATA_MIRROR", "MNIST_MIRROR"):  # MNIST_MIRROR only
            env.setdefault(var, str(root / RAW_DIR))
    with tempfile.TemporaryDirectory(prefix="reproduce-") as tmp:
        worktree = Path(tmp) / "worktree"
        added = provenance.run_git(root, "worktree", "add", "--detach", str(worktree), commit)
        if added.returncode != 0:
            raise PipelineError(f"git worktree add {commit} failed: {added.stderr.strip()}")
        try:
            if run.data.tags.get(names.GIT_DIRTY) == "true":  # --apply-diff was given
                diff = _load_diff(run_id)
                (worktree / "run.diff").write_text(diff, encoding="utf-8")
                applied = provenance.run_git(worktree, "apply", "--allow-empty", "run.diff")
                if applied.returncode != 0:
                    raise PipelineError(f"the run's diff does not apply: {applied.stderr.strip()}")
            (worktree / PARAMS_FILE).write_text(config_text, encoding="utf-8")
            python, used = Path(sys.executable), {ENVIRONMENT_TAG: "current"}
            if not current_env:
                folder, digest = locked_env(worktree, commit, allow_build, timeout)
                python, used = folder / "bin" / "python", {ENVIRONMENT_TAG: "locked"}
                used[LOCK_TAG] = digest
                env["VIRTUAL_ENV"] = str(folder)
                # The cache's environment is this tool's own: the stages' processes keep the
                # bytecode of what they import there, so only the first one compiles it.
                env.pop("PYTHONDONTWRITEBYTECODE", None)
            # The stages run `python -m pipeline...`: this environment's python comes first.
            env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
            print(f"reproduce: dvc repro at {commit[:12]} in {worktree} ({python})", flush=True)
            proc = child([str(python), "-m", "dvc", "repro"], worktree, env, timeout)
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
    rows += [(m, a.metrics.get(m), b.metrics.get(m)) for m in compared_metrics(original)]
    return env_rows + rows, env_diff


def verdict(rows: list[tuple[str, Any, Any]], env_diff: list[str]) -> tuple[list[str], bool]:
    """Lines of the table and whether the reproduction passes."""
    width = max(len(r[0]) for r in rows)
    lines, ok = [f"{'':{width}}  {'original':<22}  {'reproduced':<22}"], True
    for what, x, y in rows:
        same = x == y
        if what.startswith(names.ENV_PREFIX) or what in THREADS:
            state = "same" if same else "differs"
        elif not same and env_diff and isinstance(x, float) and isinstance(y, float):
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
    parser.add_argument(
        "--apply-diff",
        action="store_true",
        help="for a run made from a dirty tree: apply its recorded diff (listed first) and run it",
    )
    parser.add_argument(
        "--allow-build",
        action="store_true",
        help="let uv build packages that have no wheel from source (their build scripts run)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=TIMEOUT,
        metavar="SECONDS",
        help=f"stop the install and `dvc repro` after this long each ({TIMEOUT:g})",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, raise_interrupt)  # ends the children, removes the worktree

    root = project_root()
    from pipeline.tracking import store

    store.connect(store.configured_uri())
    original = find_run(args.run_id)
    commit = check_reproducible(original, root, args.apply_diff)
    try:
        new_id, used = rerun(
            original, commit, root, args.current_env, args.allow_build, args.timeout
        )
    except KeyboardInterrupt as exc:
        print(
            f"reproduce: stopped ({exc or 'Ctrl-C'}); its processes were ended and its worktree "
            "removed.",
            file=sys.stderr,
        )
        sys.exit(130)
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
