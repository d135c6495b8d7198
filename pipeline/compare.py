"""Leaderboards of trained models, ranked by validation accuracy: runs one by one, or aggregated
over the seeds of each configuration.

Inputs: the MLflow store, resolved as train does (MLFLOW_TRACKING_URI, else params.yaml's
`tracking.uri`, else the local store); `--experiment NAME` (default from params.yaml,
`tracking.experiment_name`) or `--parent RUN_ID` for one sweep's runs; `--group-by KEYS`
(params such as `model.hidden_units,train.epochs`) for the aggregate (see stats.py).
Outputs: a table on stdout; with `--csv PATH`, the same rows as CSV. Test accuracy is shown beside
validation accuracy and never used to rank.
Command: `uv run python -m pipeline.compare [--parent RUN_ID] [--group-by KEYS] [--csv PATH]`.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.config import load_params
from pipeline.errors import PipelineError, run_cli
from pipeline.tracking import (
    FAILURE_TAG,
    OVERRIDES_TAG,
    PARENT_TAG,
    SWEEP_PARENT,
    SWEEP_TAG,
    TEST_ACCURACY,
    TEST_LOSS,
    TRAIN_SECONDS,
    VAL_ACCURACY,
)

COLUMNS = (
    "run_name", "model", "hidden_units", "epochs", "seed", "val_accuracy", "test_accuracy",
    "test_loss", "train_seconds", "status", "overrides", "run_id", "failure_reason",
)  # fmt: skip
SHOWN = (*COLUMNS[:10], "run_id")
SUMMARY_COLUMNS = (
    "config", "n", "val_accuracy_mean", "val_accuracy_std", "val_accuracy_ci95",
    "test_accuracy_mean", "test_accuracy_std", "test_accuracy_ci95", "train_seconds_mean",
    "indistinguishable_from_best", "model", "hidden_units", "epochs",
)  # fmt: skip
AGGREGATED = (VAL_ACCURACY, TEST_ACCURACY, TRAIN_SECONDS)


def row_of(run: Any) -> dict[str, Any]:
    """One leaderboard row from an MLflow run."""
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    return {
        "run_name": run.info.run_name,
        "model": params.get("model.name", ""),
        "hidden_units": params.get("model.hidden_units", ""),
        "epochs": params.get("train.epochs", ""),
        "seed": params.get("seed", ""),
        "val_accuracy": metrics.get(VAL_ACCURACY),
        "test_accuracy": metrics.get(TEST_ACCURACY),
        "test_loss": metrics.get(TEST_LOSS),
        "train_seconds": metrics.get(TRAIN_SECONDS),
        "status": run.info.status,
        "overrides": tags.get(OVERRIDES_TAG, ""),
        "run_id": run.info.run_id,
        "failure_reason": tags.get(FAILURE_TAG, ""),
        "params": params,
    }


def rank(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best validation accuracy first; runs without one (failed, unfinished) last."""
    return sorted(rows, key=lambda r: (r["val_accuracy"] is None, -(r["val_accuracy"] or 0)))


def leaderboard(experiment_id: str, parent_run_id: str | None = None) -> list[dict[str, Any]]:
    """Rows for the runs of an experiment, or for the children of `parent_run_id`, ranked.

    Sweep parents themselves are left out: they hold a summary, not a model.
    """
    import mlflow

    filters = f"tags.`{PARENT_TAG}` = '{parent_run_id}'" if parent_run_id else ""
    runs = mlflow.search_runs([experiment_id], filter_string=filters, output_format="list")
    return rank([row_of(r) for r in runs if r.data.tags.get(SWEEP_TAG) != SWEEP_PARENT])


def summarise(rows: list[dict[str, Any]], keys: Sequence[str] | None = None) -> list[dict]:
    """Aggregate rows per configuration, best mean validation accuracy first (stats.aggregate).

    A configuration is the values of the params `keys`; without keys, the overrides of a sweep
    job (every seed of a job shares them) that not all jobs share, or else the run's name.
    """
    from pipeline.stats import aggregate

    finished = [r for r in rows if r["status"] == "FINISHED"]
    shared = (
        set.intersection(*(set(r["overrides"].split()) for r in finished)) if finished else set()
    )

    def config(row: dict[str, Any]) -> str:
        if keys:
            return " ".join(f"{k}={row['params'].get(k, '')}" for k in keys)
        varying = [o for o in row["overrides"].split() if o not in shared]
        return " ".join(varying) or row["overrides"] or row["run_name"]

    table = aggregate(finished, config, AGGREGATED, rank_by=VAL_ACCURACY)
    first = {config(r): r for r in finished}
    for row in table:
        row["config"] = row.pop("group")
        row.update({k: first[row["config"]][k] for k in ("model", "hidden_units", "epochs")})
    return table


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_table(rows: list[dict[str, Any]], columns: Sequence[str] = SHOWN) -> str:
    cells = [list(columns)] + [[_cell(r[c]) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _interval(row: dict[str, Any], metric: str) -> str:
    mean, ci = row[f"{metric}_mean"], row[f"{metric}_ci95"]
    return _cell(mean) if math.isnan(ci) else f"{mean:.4f} ± {ci:.4f}"


SAME = {True: "yes", False: "no", None: "-"}


def format_summary(table: list[dict[str, Any]]) -> str:
    """The aggregate as a terminal table: means ± 95% CI half-widths, best first."""
    shown = [
        {
            "config": r["config"],
            "n": r["n"],
            "val_accuracy": _interval(r, VAL_ACCURACY),
            "test_accuracy": _interval(r, TEST_ACCURACY),
            "train_s": _cell(r["train_seconds_mean"]),
            "same_as_best": SAME[r["indistinguishable_from_best"]],
        }
        for r in table
    ]
    columns = ("config", "n", "val_accuracy", "test_accuracy", "train_s", "same_as_best")
    return format_table(shown, columns)


def write_csv(rows: list[dict[str, Any]], path: Path, columns: Sequence[str] = COLUMNS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


METHOD = (
    "Ranked by mean validation accuracy over seeds; ± is the half-width of a 95% t-interval. "
    "same_as_best: Welch's t-test against the best configuration cannot reject equal means "
    "at alpha = 0.05 (- where a configuration has one seed). Test accuracy is reported, never "
    "used to choose."
)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", help="MLflow experiment (default: params.yaml's)")
    parser.add_argument("--parent", metavar="RUN_ID", help="only the runs of this sweep")
    parser.add_argument(
        "--group-by",
        metavar="KEYS",
        help="aggregate over seeds per value of these params (model.hidden_units,train.epochs)",
    )
    parser.add_argument("--csv", type=Path, metavar="PATH", help="also write the rows as CSV")
    args = parser.parse_args(argv)
    import mlflow

    from pipeline import tracking

    cfg = load_params()
    tracking.connect(cfg.tracking.uri)
    name = args.experiment or cfg.tracking.experiment_name
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        raise PipelineError(
            f"no MLflow experiment named {name!r} in {mlflow.get_tracking_uri()}; "
            "train a model first (`uv run dvc repro`) or pass --experiment NAME."
        )
    rows = leaderboard(experiment.experiment_id, args.parent)
    if not rows:
        raise PipelineError(
            f"no runs in experiment {name!r}"
            + (f" under parent run {args.parent}" if args.parent else "")
            + "; check the id with `uv run mlflow ui`."
        )
    if args.group_by:
        keys = [k.strip() for k in args.group_by.split(",") if k.strip()]
        unknown = [k for k in keys if not any(k in r["params"] for r in rows)]
        if unknown:
            known = sorted({k for r in rows for k in r["params"]})
            raise PipelineError(
                f"--group-by {','.join(unknown)}: no run has such a param; use params such as "
                f"{', '.join(known[:8])}."
            )
        rows = summarise(rows, keys)
        print(format_summary(rows))
        print(f"\n{METHOD}")
        columns: Sequence[str] = SUMMARY_COLUMNS
    else:
        print(format_table(rows))
        columns = COLUMNS
    if args.csv:
        write_csv(rows, args.csv, columns)
        print(f"wrote {len(rows)} rows to {args.csv}")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
