"""Leaderboards of trained models, ranked by validation accuracy: runs one by one, or aggregated
over the seeds of each configuration.

Inputs: the MLflow store, resolved as train does (MLFLOW_TRACKING_URI, else params.yaml's
`tracking.uri`, else the local store); `--experiment NAME` (default from params.yaml,
`tracking.experiment_name`) or `--parent RUN_ID` for one sweep's runs; `--group-by KEYS`
(params such as `model.hidden_units,train.epochs`, or with `--runs-csv` any column of the table)
for the aggregate (see stats.py).
Outputs: a table on stdout; with `--csv PATH`, the same rows as CSV. Test accuracy is shown beside
validation accuracy and never used to rank.
`--runs-csv FILE` summarises a saved runs table instead (a sweep's runs.csv, or an export of
`mlflow.search_runs`), with no store, exactly as a sweep's summary does.
`--champion` prints the history of the registered model's champion decisions instead (what
each version was judged on, with what evidence, and what was decided: tracking/registry.py).
Command: `uv run python -m pipeline.compare [--parent RUN_ID | --runs-csv FILE] [--group-by KEYS]
[--csv PATH]`, or `uv run python -m pipeline.compare --champion`.
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
    source.add_argument("--champion", action="store_true", help=(
        "the history of champion decisions of the dataset's registered model (params.yaml's "
        "tracking.registered_model)"
    ))  # fmt: skip
    args = parser.parse_args(argv)
    if args.champion:
        print(champion_history())
        return
    if args.runs_csv:
        if args.parent:
            raise PipelineError("--parent reads the store; with --runs-csv, leave it out.")
        rows = read_runs_csv(args.runs_csv)
    else:
        rows = store_rows(args.experiment, args.parent)
    keys = [k.strip() for k in (args.group_by or "").split(",") if k.strip()]
    unknown = [k for k in keys if not any(k in r["params"] or k in r.get("columns", {})
                                         for r in rows)]  # fmt: skip
    if unknown:
        known = sorted({k for r in rows for k in (*r["params"], *r.get("columns", {}))})
        raise PipelineError(
            f"--group-by {','.join(unknown)}: no run has such a param"
            + (" or column" if args.runs_csv else "")
            + f"; use one such as {', '.join(known[:8])}."
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


def champion_history() -> str:
    """Each registered version of the dataset's model, oldest first: what was decided when it
    was judged against the champion, on which examples, with what evidence."""
    import mlflow

    from pipeline.core import names
    from pipeline.tracking import registry, store

    cfg = load_params()
    store.connect(cfg.tracking.uri)
    name = cfg.tracking.registered_model
    client = mlflow.MlflowClient()
    versions = sorted(
        client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version)
    )
    if not versions:
        raise PipelineError(
            f"no registered model {name!r} in {mlflow.get_tracking_uri()}: "
            "`uv run dvc repro` registers the first version."
        )
    now = registry.champion(name)
    header = ("version", "run", "accuracy", "champion's", "only it", "only champ", "p",
              "decision")  # fmt: skip
    rows = [header]
    for v in versions:
        t = v.tags
        run = client.get_run(v.run_id).info.run_name if v.run_id else "-"
        rows.append((
            f"v{v.version}" + (" *" if str(v.version) == now else ""), run,
            t.get(names.PROMOTION_ACCURACY, "-"), t.get(names.PROMOTION_CHAMPION_ACCURACY, "-"),
            t.get(names.PROMOTION_ONLY_THIS, "-"), t.get(names.PROMOTION_ONLY_CHAMPION, "-"),
            t.get(names.PROMOTION_P_VALUE, "-"), t.get(names.PROMOTION_DECISION, "not judged"),
        ))  # fmt: skip
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1]
             for r in rows]  # fmt: skip
    digests = {v.tags.get(names.PROMOTION_EXAMPLES_SHA256, "")[:12] for v in versions} - {""}
    lines.append(
        f"\n{name}: {len(versions)} versions, champion v{now} (*). Judged on the validation "
        f"split, examples {', '.join(sorted(digests)) or '-'}; rule: params.yaml's registry "
        f"({cfg.registry.promote}, alpha {cfg.registry.alpha})."
    )
    return "\n".join(lines)


def cli() -> None:
    run_cli(main, sys.argv[1:])


if __name__ == "__main__":
    cli()
