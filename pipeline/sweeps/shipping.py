"""Jobs that carry everything they need: a sweep on a cluster that shares no disk with it.

A launcher that ships jobs (`ray_cluster`) gives each the project's code through Ray's runtime
environment (`working_dir`: the project without its data, environments, stores and sweeps;
conf/hydra/launcher/ray_cluster.yaml) and, with its task (`carrying`), what the sweep's
`parent_run.json` holds: the parent run, the tracking server, the data's digests, the code's git
state and the DVC remote to pull the prepared data from (no secret: a node has its own
credentials).

The sweep pushes data/processed to that remote before the first job (`ship_data`); a job pulls it
into its own copy's DVC cache and checks every shard against the digests the sweep expects
(`pull_prepared`). Its results go to the MLflow server only; what it writes stays on its node.
The same path serves Ray nodes on this machine and hosts of their own.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.core import names
from pipeline.core.data import write_json
from pipeline.core.errors import DataError
from pipeline.core.paths import PROCESSED_DIR
from pipeline.core.shards import MANIFEST, SPLITS, Shards, read_manifest

SWEEP_ENV = "PIPELINE_SWEEP"  # a shipped job's parent run and data, as JSON
SECRET_KEYS = ("access_key_id", "secret_access_key", "session_token", "password", "user")
STACK_REMOTE = "stack"  # pipeline.stack's remote, preferred when the project has it


def _dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True
    )


def jobs_remote(root: Path) -> dict[str, str]:
    """The DVC remote shipped jobs pull from, without its secrets (a job's node has its own
    credentials in its environment): the stack's `stack` remote where the project has one, else
    DVC's default remote."""
    from dvc.config import Config

    config = Config(dvc_dir=str(root / ".dvc"), validate=False)
    remotes = config["remote"]
    name = STACK_REMOTE if STACK_REMOTE in remotes else config["core"].get("remote")
    if not name or name not in remotes:
        raise DataError(
            "jobs on another machine take the prepared data from a DVC remote, and this "
            "project has none: add one (`dvc remote add -d NAME s3://...`, docs/scaling.md) "
            "or start the stack (`pipeline.stack up` adds `stack`)."
        )
    settings = {k: str(v) for k, v in remotes[name].items() if k not in SECRET_KEYS}
    url = settings["url"]
    if "://" not in url:
        raise DataError(
            f"DVC remote {name!r} is the folder {url}, which a job on another machine cannot "
            "reach: make an S3 (or other network) remote the default for cluster sweeps."
        )
    return {"name": name, **settings}


def ship_data(root: Path, remote: dict[str, str]) -> None:
    """Push data/processed to `remote` (DVC uploads only what the remote lacks)."""
    pushed = _dvc(root, "push", "-r", remote["name"], str(PROCESSED_DIR))
    if pushed.returncode != 0:
        raise DataError(
            f"`dvc push -r {remote['name']} {PROCESSED_DIR}` failed (exit {pushed.returncode}): "
            f"{pushed.stderr.strip()[-500:]}; the jobs could not get the data."
        )


def pull_prepared(root: Path, remote: dict[str, str], digests: dict[str, str]) -> None:
    """data/processed in this job's copy of the project at `root`: pulled from `remote` into
    the copy's own DVC cache (once per copy: the jobs that share a node's copy take turns), each
    split checked against the sweep's `digests`."""
    from filelock import FileLock

    with FileLock(root / ".dvc" / "pull.lock"):
        if not (root / PROCESSED_DIR / MANIFEST).exists():
            _pull(root, remote)
    read_manifest.cache_clear()
    for split in SPLITS:
        shards = Shards(root / PROCESSED_DIR, split)
        for index in range(len(shards.files())):
            shards.records(index)  # each shard's size and SHA-256 against the manifest
        expected = digests.get(f"processed.{split}")
        if shards.digest != expected:
            raise DataError(
                f"the {split} split pulled from DVC remote {remote['name']!r} has digest "
                f"{shards.digest[:12]}, the sweep's is {str(expected)[:12]}: the remote holds "
                "other data. Run the sweep again (it pushes its data first)."
            )


def _pull(root: Path, remote: dict[str, str]) -> None:
    setup = [
        ("config", "--local", "core.no_scm", "true"),  # the copy is not a git repository
        ("remote", "add", "--local", "--force", remote["name"], remote["url"]),
        *(
            ("remote", "modify", "--local", remote["name"], key, value)
            for key, value in remote.items()
            if key not in ("name", "url")
        ),
    ]
    for args in setup:
        done = _dvc(root, *args)
        if done.returncode != 0:
            raise DataError(f"`dvc {' '.join(args[:3])}` failed: {done.stderr.strip()}")
    pulled = _dvc(root, "pull", "-r", remote["name"], str(PROCESSED_DIR))
    if pulled.returncode != 0:
        raise DataError(
            f"`dvc pull -r {remote['name']} {PROCESSED_DIR}` from {remote['url']} failed "
            f"(exit {pulled.returncode}) on this node: {pulled.stderr.strip()[-500:]}"
        )


def shipped_task(task: Callable[[Any], Any], parent: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """A job on another machine: `task` run with the sweep's `parent` (the task carried it);
    its objective, the job's outcome (its job.json) and folder returned through the launcher
    to the sweep, which writes job.json in its own folder."""
    from hydra.core.hydra_config import HydraConfig

    os.environ[SWEEP_ENV] = json.dumps(parent)
    try:
        objective = task(cfg)
    finally:
        os.environ.pop(SWEEP_ENV, None)
    folder = Path(HydraConfig.get().runtime.output_dir)
    outcome_file = folder / names.JOB_FILE
    outcome = json.loads(outcome_file.read_text()) if outcome_file.is_file() else None
    return {"objective": objective, "outcome": outcome, "folder": str(folder)}


def carrying(task: Callable[[Any], Any], sweep_dir: str) -> Callable[[Any], Any]:
    """`task` as the launcher ships it: carrying the sweep's parent run and data (its
    parent_run.json, read here), returning its objective with the job's outcome. Ray keeps a
    node's worker for the next task of the same runtime environment, which this leaves as it
    is: a warm worker runs the next job (and the next sweep's) without importing again."""
    parent = json.loads((Path(sweep_dir) / names.PARENT_FILE).read_text(encoding="utf-8"))
    return functools.partial(shipped_task, task, parent)


def received(ret: Any) -> Any:
    """A shipped job's `JobReturn` back in the sweep: its outcome written to job.json in the
    sweep's folder (where the summary reads it; a job on this machine wrote it already), its
    return value the task's objective again."""
    from hydra.core.utils import JobStatus

    value = ret._return_value if ret.status == JobStatus.COMPLETED else None
    if isinstance(value, dict) and "outcome" in value:
        outcome, ret.return_value = value["outcome"], value["objective"]
        target = Path(value["folder"]) / names.JOB_FILE  # the job's folder, here
        if outcome is not None and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            write_json(target, outcome)
    return ret


def shipped_parent() -> dict[str, Any] | None:
    """A shipped job's parent run and data (`shipped_task` sets it), or None on the sweep's own
    machine (the sweep folder's parent_run.json)."""
    text = os.environ.get(SWEEP_ENV)
    return json.loads(text) if text else None
