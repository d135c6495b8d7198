"""Find MLflow runs left RUNNING by a process that died without closing them (SIGKILL, a crash).

Inputs: the MLflow store, resolved as train does (see names.py); every run records its
`host` and `pid`.
Outputs: the list of RUNNING runs and whether their process is alive; with `--cleanup`, runs of
this host whose process is gone are ended KILLED, with the reason in `failure_reason`.
Runs of other hosts are listed, never touched.
Command: `uv run python -m pipeline.runs [--cleanup]`.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

from pipeline.core.errors import command_parser, run_cli
from pipeline.tracking import names
from pipeline.tracking.names import HOST_TAG, PID_TAG


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def orphaned(run: Any, host: str) -> bool:
    """A RUNNING run of this host whose process no longer exists."""
    tags = run.data.tags
    pid = tags.get(PID_TAG, "")
    return tags.get(HOST_TAG) == host and pid.isdigit() and not process_alive(int(pid))


def main(argv: list[str]) -> None:
    parser = command_parser("runs", __doc__)
    parser.add_argument("--cleanup", action="store_true", help="end orphaned runs as KILLED")
    args = parser.parse_args(argv)
    import mlflow

    from pipeline.tracking import store

    store.connect(store.configured_uri())
    client = mlflow.MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    running = (
        mlflow.search_runs(
            experiments, filter_string="attributes.status = 'RUNNING'", output_format="list"
        )
        if experiments
        else []
    )
    host = platform.node()
    ended = 0
    for run in running:
        tags = run.data.tags
        where = f"{tags.get(HOST_TAG, '?')} pid {tags.get(PID_TAG, '?')}"
        if not orphaned(run, host):
            state = "other host" if tags.get(HOST_TAG) != host else "process alive"
            print(f"{run.info.run_id}  {run.info.run_name}  RUNNING  {where} ({state})")
            continue
        if args.cleanup:
            reason = f"process {tags[PID_TAG]} on {host} ended without closing the run"
            client.set_tag(run.info.run_id, names.FAILURE_TAG, reason)
            client.set_terminated(run.info.run_id, status="KILLED")
            ended += 1
            print(f"{run.info.run_id}  {run.info.run_name}  -> KILLED ({reason})")
        else:
            print(f"{run.info.run_id}  {run.info.run_name}  RUNNING  {where} (process gone)")
    orphans = sum(orphaned(r, host) for r in running)
    print(f"{len(running)} running, {orphans} orphaned, {ended} marked KILLED")
    if orphans and not args.cleanup:
        print(
            "run `uv run python -m pipeline.runs --cleanup` to mark them KILLED", file=sys.stderr
        )


def cli() -> None:
    run_cli(main, sys.argv[1:])


if __name__ == "__main__":
    cli()
