"""Reproduce an MLflow run from its commit and check the result bit for bit.

Inputs: a run id in the project's MLflow store; the run's `git_commit` (and its uncommitted diff
when the tree was dirty), its `config.yaml` artifact, and the MNIST files (MNIST_MIRROR, else
the project's data/raw/, else the public mirrors; verified by digest either way).
Outputs: a new run tagged `reproduces=RUN_ID`, and a table of weights hash, data digests and
test metrics, original against reproduced. Exit 0 only when everything is identical; when the
environment differs (versions, CPU), the metrics are judged within TOLERANCE instead.
Command: `uv run python -m pipeline.reproduce RUN_ID`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from pipeline import provenance, tracking
from pipeline.errors import PipelineError, run_cli
from pipeline.paths import PARAMS_FILE, RAW_DIR, RUN_FILE, project_root

TOLERANCE = 0.002  # absolute, on every metric, when the environment differs
METRICS = (
    tracking.TEST_ACCURACY,
    tracking.TEST_LOSS,
    tracking.MACRO_F1,
    *(tracking.F1_CLASS.format(c) for c in range(10)),
)


def find_run(run_id: str) -> Any:
    return tracking.get_run(run_id, "list runs with `uv run python -m pipeline.compare`.")


def check_reproducible(run: Any, root: Path) -> str:
    """The run's commit, once it is known to be in this repository; warn about a dirty tree."""
    tags, run_id = run.data.tags, run.info.run_id
    commit = tags.get(provenance.GIT_COMMIT, provenance.NOT_IN_GIT)
    if commit == provenance.NOT_IN_GIT:
        raise PipelineError(f"run {run_id} has no git_commit tag: it was not made in a git repo.")
    if tracking.WEIGHTS_SHA256_TAG not in tags:
        raise PipelineError(f"run {run_id} records no weights_sha256, so it cannot be checked.")
    if provenance.run_git(root, "cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        raise PipelineError(
            f"commit {commit} of run {run_id} is not in the repository at {root}; "
            "fetch the branch it was made on (`git fetch --all`) and run again."
        )
    if tags.get(provenance.GIT_DIRTY) == "true":
        print(
            f"warning: run {run_id} was made from a dirty tree; its recorded diff is applied "
            "on top of the commit.",
            file=sys.stderr,
        )
    return commit


def rerun(run: Any, commit: str, root: Path) -> str:
    """Check out `commit` in a temporary worktree, restore the config, `dvc repro` there.

    Returns the id of the new run; the worktree is removed whatever happens.
    """
    import mlflow

    run_id = run.info.run_id
    config_text = mlflow.artifacts.load_text(f"runs:/{run_id}/{tracking.CONFIG_ARTIFACT}")
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
            if run.data.tags.get(provenance.GIT_DIRTY) == "true":
                diff = mlflow.artifacts.load_text(f"runs:/{run_id}/{tracking.DIFF_ARTIFACT}")
                (worktree / "run.diff").write_text(diff, encoding="utf-8")
                applied = provenance.run_git(worktree, "apply", "--allow-empty", "run.diff")
                if applied.returncode != 0:
                    raise PipelineError(f"the run's diff does not apply: {applied.stderr.strip()}")
            (worktree / PARAMS_FILE).write_text(config_text, encoding="utf-8")
            print(f"reproduce: dvc repro at {commit[:12]} in {worktree}", flush=True)
            proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=worktree, env=env)
            if proc.returncode != 0:
                raise PipelineError(f"`dvc repro` at commit {commit} exited {proc.returncode}.")
            return json.loads((worktree / RUN_FILE).read_text(encoding="utf-8"))["run_id"]
        finally:
            provenance.run_git(root, "worktree", "remove", "--force", str(worktree))
            provenance.run_git(root, "worktree", "prune")


def compare(original: Any, reproduced: Any) -> tuple[list[tuple[str, Any, Any]], list[str]]:
    """Rows (what, original, reproduced) and the environment keys that differ."""
    a, b = original.data, reproduced.data
    keys = sorted(k for k in a.tags if k.startswith(provenance.DATA_PREFIX))
    keys += [provenance.PARAMS_SHA256, tracking.WEIGHTS_SHA256_TAG]
    rows = [(k, a.tags.get(k), b.tags.get(k)) for k in keys]
    rows += [(m, a.metrics.get(m), b.metrics.get(m)) for m in METRICS]
    env_keys = sorted(k for k in a.tags if k.startswith(provenance.ENV_PREFIX))
    env_diff = [k for k in env_keys if a.tags.get(k) != b.tags.get(k)]
    return rows, env_diff


def verdict(rows: list[tuple[str, Any, Any]], env_diff: list[str]) -> tuple[list[str], bool]:
    """Lines of the table and whether the reproduction passes."""
    width = max(len(r[0]) for r in rows)
    lines, ok = [f"{'':{width}}  {'original':<22}  {'reproduced':<22}"], True
    for what, x, y in rows:
        same = x == y
        if not same and env_diff and what in METRICS and None not in (x, y):
            state = "within tolerance" if abs(x - y) <= TOLERANCE else "DIFFERENT"
        elif not same and env_diff and what == tracking.WEIGHTS_SHA256_TAG:
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
    parser = argparse.ArgumentParser(description="Reproduce an MLflow run from its commit.")
    parser.add_argument("run_id")
    args = parser.parse_args(argv)

    root = project_root()
    tracking.connect(tracking.configured_uri())
    original = find_run(args.run_id)
    commit = check_reproducible(original, root)
    reproduced = find_run(rerun(original, commit, root))
    rows, env_diff = compare(original, reproduced)
    lines, ok = verdict(rows, env_diff)
    print(
        f"\nrun {original.info.run_id} (commit {commit[:12]}) reproduced as "
        f"{reproduced.info.run_id}\n"
    )
    print("\n".join(lines))
    if env_diff:
        changes = ", ".join(
            f"{k}: {original.data.tags.get(k)} -> {reproduced.data.tags.get(k)}" for k in env_diff
        )
        print(f"\nenvironment differs ({changes}); metrics judged within +/-{TOLERANCE}.")
    if not ok:
        print("\nnot reproduced: see the rows marked DIFFERENT.", file=sys.stderr)
        sys.exit(1)
    print("\nreproduced: " + ("within tolerance." if env_diff else "bit for bit."))


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
