"""Leaderboard of trained models: the runs of an experiment, or of one sweep, best first.

Inputs: the MLflow store, resolved as train does (MLFLOW_TRACKING_URI, else params.yaml's
`tracking.uri`, else the local store); `--experiment NAME` (default from params.yaml,
`tracking.experiment_name`) or `--parent RUN_ID` for one sweep's runs.
Outputs: a table on stdout; with `--csv PATH`, the same rows as CSV.
Command: `uv run python -m pipeline.compare [--parent RUN_ID] [--csv PATH]`.
"""

from __future__ import annotations

import argparse
import csv
import sys
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
    "run_name", "model", "hidden_units", "epochs", "test_accuracy", "val_accuracy", "test_loss",
    "train_seconds", "status", "overrides", "run_id", "failure_reason",
)  # fmt: skip
SHOWN = COLUMNS[:9] + ("run_id",)


def row_of(run: Any) -> dict[str, Any]:
    """One leaderboard row from an MLflow run."""
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    return {
        "run_name": run.info.run_name,
        "model": params.get("model.name", ""),
        "hidden_units": params.get("model.hidden_units", ""),
        "epochs": params.get("train.epochs", ""),
        "test_accuracy": metrics.get(TEST_ACCURACY),
        "val_accuracy": metrics.get(VAL_ACCURACY),
        "test_loss": metrics.get(TEST_LOSS),
        "train_seconds": metrics.get(TRAIN_SECONDS),
        "status": run.info.status,
        "overrides": tags.get(OVERRIDES_TAG, ""),
        "run_id": run.info.run_id,
        "failure_reason": tags.get(FAILURE_TAG, ""),
    }


def rank(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best test accuracy first; runs without one (failed, unfinished) last."""
    return sorted(rows, key=lambda r: (r["test_accuracy"] is None, -(r["test_accuracy"] or 0)))


def leaderboard(experiment_id: str, parent_run_id: str | None = None) -> list[dict[str, Any]]:
    """Rows for the runs of an experiment, or for the children of `parent_run_id`, ranked.

    Sweep parents themselves are left out: they hold a summary, not a model.
    """
    import mlflow

    filters = f"tags.`{PARENT_TAG}` = '{parent_run_id}'" if parent_run_id else ""
    runs = mlflow.search_runs([experiment_id], filter_string=filters, output_format="list")
    return rank([row_of(r) for r in runs if r.data.tags.get(SWEEP_TAG) != SWEEP_PARENT])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_table(rows: list[dict[str, Any]], columns: tuple[str, ...] = SHOWN) -> str:
    cells = [list(columns)] + [[_cell(r[c]) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", help="MLflow experiment (default: params.yaml's)")
    parser.add_argument("--parent", metavar="RUN_ID", help="only the runs of this sweep")
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
    print(format_table(rows))
    if args.csv:
        write_csv(rows, args.csv)
        print(f"wrote {len(rows)} rows to {args.csv}")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
