"""Find MLflow runs left RUNNING by a process that died without closing them (SIGKILL, a crash);
draw the figures of a sweep's models that left them on demand.

Inputs: the MLflow store, resolved as train does (see names.py); every run records its
`host` and `pid`.
Outputs: the list of RUNNING runs and whether their process is alive; with `--cleanup`, runs of
this host whose process is gone are ended KILLED, with the reason in `failure_reason`.
Runs of other hosts are listed, never touched.
With `--figures RUN_ID ...`: a sweep draws the figures of each configuration's best model and
keeps what the others' are drawn from (figures/figure_data.npz); this draws them and logs them
to the run (the web app draws them when a page shows them).
Command: `uv run python -m pipeline.runs [--cleanup] [--figures RUN_ID ...]`.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

from pipeline.core import names
from pipeline.core.errors import command_parser, run_cli
from pipeline.core.names import HOST_TAG, PID_TAG


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


def draw_figures(run_id: str) -> None:
    """Draw the figures of `run_id`'s model from its figure data and log them to the run."""
    import tempfile
    from pathlib import Path

    from pipeline.tracking import experiment, runs

    run = runs.get_run(run_id, "pass the id of a sweep's model run.")
    if run.data.tags.get(names.FIGURES_TAG) == names.FIGURES_DRAWN:
        print(f"{run_id}  {run.info.run_name}  figures already drawn")
        return
    with tempfile.TemporaryDirectory(prefix="figures-") as tmp:
        folder = experiment.draw_run_figures(run_id, Path(tmp))
        experiment.log_figures(run_id, folder)
    print(f"{run_id}  {run.info.run_name}  figures drawn -> its {names.FIGURES_ARTIFACT}/")


def main(argv: list[str]) -> None:
    parser = command_parser("runs", __doc__)
    parser.add_argument("--cleanup", action="store_true", help="end orphaned runs as KILLED")
    parser.add_argument(
        "--figures", nargs="+", metavar="RUN_ID", help="draw and log these runs' figures"
    )
    args = parser.parse_args(argv)
    import mlflow

    from pipeline.tracking import store

    store.connect(store.configured_uri())
    if args.figures:
        for run_id in args.figures:
            draw_figures(run_id)
        return
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
