"""Leaderboards of trained models, ranked by validation accuracy: runs one by one, or aggregated
over the seeds of each configuration.

Inputs: the MLflow store, resolved as train does (MLFLOW_TRACKING_URI, else params.yaml's
`tracking.uri`, else the local store); `--experiment NAME` (default from params.yaml,
`tracking.experiment_name`) or `--parent RUN_ID` for one sweep's runs; `--group-by KEYS`
(params such as `model.hidden_units,train.epochs`) for the aggregate (see stats.py).
Outputs: a table on stdout; with `--csv PATH`, the same rows as CSV. Test accuracy is shown beside
validation accuracy and never used to rank.
`--runs-csv FILE` summarises a saved runs table instead (a sweep's runs.csv, or an export of
`mlflow.search_runs`), with no store, exactly as a sweep's summary does.
Command: `uv run python -m pipeline.compare [--parent RUN_ID | --runs-csv FILE] [--group-by KEYS]
[--csv PATH]`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.core.config import load_params
from pipeline.core.errors import PipelineError, command_parser, run_cli
from pipeline.sweeps.summary import (
    COLUMNS,
    METHOD,
    SUMMARY_COLUMNS,
    format_summary,
    format_table,
    leaderboard,
    read_runs_csv,
    summarise,
    write_csv,
)


def main(argv: list[str]) -> None:
    parser = command_parser("compare", __doc__)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--experiment", help="MLflow experiment (default: params.yaml's)")
    source.add_argument("--runs-csv", type=Path, metavar="FILE", help=(
        "summarise this runs table instead of the store: a sweep's runs.csv, or "
        "mlflow.search_runs(...) saved as CSV"
    ))  # fmt: skip
    parser.add_argument("--parent", metavar="RUN_ID", help="only the runs of this sweep")
    parser.add_argument(
        "--group-by",
        metavar="KEYS",
        help="aggregate over seeds per value of these params (model.hidden_units,train.epochs)",
    )
    parser.add_argument("--csv", type=Path, metavar="PATH", help="also write the rows as CSV")
    args = parser.parse_args(argv)
    if args.runs_csv:
        if args.parent:
            raise PipelineError("--parent reads the store; with --runs-csv, leave it out.")
        rows = read_runs_csv(args.runs_csv)
    else:
        rows = store_rows(args.experiment, args.parent)
    keys = [k.strip() for k in (args.group_by or "").split(",") if k.strip()]
    unknown = [k for k in keys if not any(k in r["params"] for r in rows)]
    if unknown:
        known = sorted({k for r in rows for k in r["params"]})
        raise PipelineError(
            f"--group-by {','.join(unknown)}: no run has such a param; use params such as "
            f"{', '.join(known[:8])}."
        )
    if keys or args.runs_csv:  # a runs table is summarised as its sweep's summary was
        rows = summarise(rows, keys or None)
        print(format_summary(rows))
        print(f"\n{METHOD}")
        columns: Sequence[str] = SUMMARY_COLUMNS
    else:
        print(format_table(rows))
        columns = COLUMNS
    if args.csv:
        write_csv(rows, args.csv, columns)
        print(f"wrote {len(rows)} rows to {args.csv}")


def store_rows(experiment: str | None, parent: str | None) -> list[dict]:
    """The leaderboard rows of `experiment` (default: params.yaml's), or of one sweep."""
    import mlflow

    from pipeline.tracking import store

    cfg = load_params()
    store.connect(cfg.tracking.uri)
    name = experiment or cfg.tracking.experiment_name
    found = mlflow.get_experiment_by_name(name)
    if found is None:
        raise PipelineError(
            f"no MLflow experiment named {name!r} in {mlflow.get_tracking_uri()}; "
            "train a model first (`uv run dvc repro`) or pass --experiment NAME."
        )
    rows = leaderboard(found.experiment_id, parent)
    if not rows:
        raise PipelineError(
            f"no runs in experiment {name!r}"
            + (f" under parent run {parent}" if parent else "")
            + "; check the id with `uv run mlflow ui`."
        )
    return rows


def cli() -> None:
    run_cli(main, sys.argv[1:])


if __name__ == "__main__":
    cli()
