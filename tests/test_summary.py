"""A sweep's summary row (pipeline/sweeps/summary.py `summarise`), from rows made up for the
case: one row per configuration, named by the overrides its jobs do not share, with the mean,
spread and 95% interval of its finished seeds, their count, and the verdict against the best."""

from __future__ import annotations

import statistics

import pytest
from scipy import stats

from pipeline.sweeps.stats import VERDICT
from pipeline.sweeps.summary import summarise


def row(hidden: int, seed: int, val: float, status: str = "FINISHED") -> dict:
    return {
        "run_name": f"mlp-h{hidden}-e3-s{seed}", "model": "mlp", "hidden_units": hidden,
        "epochs": 3, "seed": seed, "val_accuracy": val, "test_accuracy": val - 0.01,
        "test_loss": 0.1, "train_seconds": 2.0 + hidden / 100, "status": status,
        "overrides": f"model.hidden_units={hidden} train.epochs=3", "run_id": f"r{hidden}{seed}",
        "failure_reason": "",
    }  # fmt: skip


def test_a_row_per_configuration_with_its_seeds_spread_interval_and_verdict() -> None:
    wide = [0.970, 0.972, 0.971]
    narrow = [0.950, 0.951, 0.949, 0.5]  # its last seed FAILED: not counted
    rows = [row(128, 42 + i, v) for i, v in enumerate(wide)]
    rows += [row(32, 42 + i, v, "FAILED" if i == 3 else "FINISHED") for i, v in enumerate(narrow)]
    best, other = summarise(rows)
    assert (best["config"], other["config"]) == ("model.hidden_units=128", "model.hidden_units=32")
    assert (best["n"], other["n"]) == (3, 3) and not best["fewer_seeds"]
    assert best["val_accuracy_mean"] == pytest.approx(statistics.mean(wide))
    assert best["val_accuracy_std"] == pytest.approx(statistics.stdev(wide))
    half = stats.t.ppf(0.975, 2) * statistics.stdev(wide) / 3**0.5
    assert best["val_accuracy_ci95"] == pytest.approx(half)
    assert best["test_accuracy_mean"] == pytest.approx(statistics.mean(wide) - 0.01)
    assert best["train_seconds_mean"] == pytest.approx(3.28)
    assert (best["model"], best["hidden_units"], best["epochs"]) == ("mlp", 128, 3)
    welch = stats.ttest_ind(wide, narrow[:3], equal_var=False).pvalue
    assert other["p_vs_best"] == pytest.approx(welch)
    assert best[VERDICT] == "best" and other[VERDICT] == "worse than the best"


def test_a_configuration_with_fewer_finished_seeds_is_marked_and_ranks_after() -> None:
    rows = [row(64, 42, 0.99)]  # one seed, the highest accuracy
    rows += [row(128, 42 + i, v) for i, v in enumerate([0.970, 0.972])]
    first, second = summarise(rows)
    assert first["config"] == "model.hidden_units=128" and not first["fewer_seeds"]
    assert second["config"] == "model.hidden_units=64" and second["fewer_seeds"]
    assert second["n"] == 1
