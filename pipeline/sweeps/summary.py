"""Summaries of runs: one row per model, and the aggregate over the seeds of each configuration.

`leaderboard` reads a sweep's or an experiment's runs from MLflow into rows; `summarise` turns
rows into the per-configuration table (mean, spread, 95% interval, the comparison with the best:
see stats.py); `format_*` and `write_csv` show and keep them; `sweep_figures` draws the table.
The sweep's end and `pipeline.compare` both use them.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.core.errors import PipelineError
from pipeline.core.names import (
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
from pipeline.sweeps.stats import METHOD as TEST_METHOD
from pipeline.sweeps.stats import VERDICT, aggregate

COLUMNS = (
    "run_name", "model", "hidden_units", "epochs", "seed", "val_accuracy", "test_accuracy",
    "test_loss", "train_seconds", "status", "overrides", "run_id", "failure_reason",
)  # fmt: skip
SHOWN = (*COLUMNS[:10], "run_id")
SUMMARY_COLUMNS = (
    "config", "n", "fewer_seeds", "val_accuracy_mean", "val_accuracy_std", "val_accuracy_ci95",
    "test_accuracy_mean", "test_accuracy_std", "test_accuracy_ci95", "train_seconds_mean",
    "p_vs_best", "p_vs_best_holm", VERDICT, "model", "hidden_units", "epochs",
)  # fmt: skip
AGGREGATED = (VAL_ACCURACY, TEST_ACCURACY, TRAIN_SECONDS)


def make_row(
    run_name: str,
    params: dict[str, str],
    metric: Callable[[str], float | None],
    status: str,
    overrides: str,
    run_id: str,
    failure_reason: str,
) -> dict[str, Any]:
    """One leaderboard row (COLUMNS, and the run's `params`); `metric` gives a metric's value
    by name (None where the run has none)."""
    return {
        "run_name": run_name,
        "model": params.get("model.name", ""),
        "hidden_units": params.get("model.hidden_units", ""),
        "epochs": params.get("train.epochs", ""),
        "seed": params.get("seed", ""),
        "val_accuracy": metric(VAL_ACCURACY),
        "test_accuracy": metric(TEST_ACCURACY),
        "test_loss": metric(TEST_LOSS),
        "train_seconds": metric(TRAIN_SECONDS),
        "status": status,
        "overrides": overrides,
        "run_id": run_id,
        "failure_reason": failure_reason,
        "params": params,
    }


def row_of(run: Any) -> dict[str, Any]:
    """One leaderboard row from an MLflow run."""
    tags = run.data.tags
    return make_row(
        run.info.run_name,
        run.data.params,
        run.data.metrics.get,
        run.info.status,
        tags.get(OVERRIDES_TAG, ""),
        run.info.run_id,
        tags.get(FAILURE_TAG, ""),
    )


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


def group_value(row: dict[str, Any], key: str) -> str:
    """A row's value of `key`: a param (`model.hidden_units`), or any column of a runs table
    read from CSV (`config_id`, `params.seed`, `tags.dataset`)."""
    params = row["params"]
    return str(params[key]) if key in params else str(row.get("columns", {}).get(key, ""))


def summarise(rows: list[dict[str, Any]], keys: Sequence[str] | None = None) -> list[dict]:
    """Aggregate rows per configuration, best mean validation accuracy first (stats.aggregate).

    A configuration is the values of the params `keys`; without keys, the overrides of a sweep
    job (every seed of a job shares them) that not all jobs share, or else the run's name.
    """
    finished = [r for r in rows if r["status"] == "FINISHED"]
    shared = (
        set.intersection(*(set(r["overrides"].split()) for r in finished)) if finished else set()
    )

    def config(row: dict[str, Any]) -> str:
        if keys:
            return " ".join(f"{k}={group_value(row, k)}" for k in keys)
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


def format_summary(table: list[dict[str, Any]]) -> str:
    """The aggregate as a terminal table: means ± 95% CI half-widths, the best first, the
    verdict against it; `n*` marks a configuration with fewer finished seeds than the others."""
    shown = [
        {
            "config": r["config"],
            "n": f"{r['n']}*" if r["fewer_seeds"] else str(r["n"]),
            "val_accuracy": _interval(r, VAL_ACCURACY),
            "test_accuracy": _interval(r, TEST_ACCURACY),
            "train_s": _cell(r["train_seconds_mean"]),
            "p_holm": _cell(r["p_vs_best_holm"]),
            "vs_best": r[VERDICT],
        }
        for r in table
    ]
    columns = ("config", "n", "val_accuracy", "test_accuracy", "train_s", "p_holm", "vs_best")
    text = format_table(shown, columns)
    if any(r["fewer_seeds"] for r in table):
        text += "\n* fewer finished seeds than the other configurations"
    return text


def write_csv(rows: list[dict[str, Any]], path: Path, columns: Sequence[str] = COLUMNS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


METHOD = (
    "Ranked by mean validation accuracy over seeds; ± is the half-width of a 95% t-interval. "
    f"{TEST_METHOD} 'Cannot be told apart' means the seeds show no difference, not that there "
    "is none. Test accuracy is reported, never used to choose."
)


def read_runs_csv(path: Path) -> list[dict[str, Any]]:
    """Rows, as `leaderboard` makes them, from a runs table saved as CSV: a sweep's runs.csv,
    or `mlflow.search_runs(...)` written with `to_csv` (columns `metrics.*`, `params.*`,
    `tags.*`). Params are the `params.*` columns, and the short columns model, hidden_units,
    epochs and seed under their config keys."""
    if not path.is_file():
        raise PipelineError(f"--runs-csv {path}: no such file.")
    with path.open(newline="", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    if not table or not ({VAL_ACCURACY, f"metrics.{VAL_ACCURACY}"} & set(table[0])):
        raise PipelineError(
            f"--runs-csv {path}: no {VAL_ACCURACY} (or metrics.{VAL_ACCURACY}) column"
            + (f"; its columns are {', '.join(list(table[0])[:12])}" if table else ", no rows")
            + ". Give a sweep's runs.csv or an export of mlflow.search_runs."
        )
    return rank([_csv_row(r) for r in table])


SHORT_PARAMS = {"model": "model.name", "hidden_units": "model.hidden_units",
                "epochs": "train.epochs", "seed": "seed"}  # fmt: skip


def _csv_row(raw: dict[str, str]) -> dict[str, Any]:
    def cell(*names: str) -> str:
        return next((raw[n] for n in names if raw.get(n) not in (None, "")), "")

    def number(name: str) -> float | None:
        text = cell(name, f"metrics.{name}")
        try:
            value = float(text)
        except ValueError:
            return None
        return None if math.isnan(value) else value

    params = {k.removeprefix("params."): v for k, v in raw.items() if k.startswith("params.")}
    for short, key in SHORT_PARAMS.items():
        if raw.get(short):
            params.setdefault(key, raw[short])
    row = make_row(
        cell("run_name", "tags.mlflow.runName"),
        params,
        number,
        cell("status") or "FINISHED",
        cell("overrides", f"tags.{OVERRIDES_TAG}"),
        cell("run_id"),
        cell("failure_reason", f"tags.{FAILURE_TAG}"),
    )
    return row | {"columns": dict(raw)}  # every column as written: --group-by takes any


def save_sweep_figures(table: list[dict[str, Any]], heatmap: bool, folder: Path) -> list[str]:
    """Draw the sweep's figures (`sweep_figures`) into `folder`; return their file names. Plain
    data in and out: the sweep's end has it done in its figure process."""
    figures = sweep_figures(table, heatmap)
    for name, fig in figures.items():
        fig.savefig(folder / name, dpi=100)
    return list(figures)


def sweep_figures(table: list[dict[str, Any]], heatmap: bool) -> dict[str, Any]:
    """The sweep's figures from its summary: validation accuracy, the mean over seeds with its
    95% interval (no bars with one seed); the hidden units x epochs heatmap for a grid."""
    from pipeline.core import plots

    if not table:
        return {}
    hidden = [int(r["hidden_units"]) for r in table]
    epochs = [int(r["epochs"]) for r in table]
    mean = [r["val_accuracy_mean"] for r in table]
    ci = [r["val_accuracy_ci95"] for r in table]
    several_models = len({r["model"] for r in table}) > 1
    groups = [
        f"{r['model']} e{r['epochs']}" if several_models else f"e{r['epochs']}" for r in table
    ]
    labels = [f"h{h}-e{e}" for h, e in zip(hidden, epochs, strict=True)]
    figures = {
        "accuracy_by_hidden_units.png": plots.sweep_lines(hidden, mean, groups, ci),
        "accuracy_vs_seconds.png": plots.accuracy_vs_seconds(
            [r["train_seconds_mean"] for r in table], mean, labels, ci
        ),
    }
    if heatmap:
        figures["accuracy_heatmap.png"] = plots.sweep_heatmap(hidden, epochs, mean, ci)
    return figures
