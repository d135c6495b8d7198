"""The statistics of sweep summaries, against scipy.stats and numbers worked by hand."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from pipeline.sweeps.stats import aggregate, mean_sd_ci95, welch_p


def test_mean_sd_and_95_percent_interval_of_the_mean() -> None:
    values = [0.9734, 0.9751, 0.9777, 0.9760]
    mean, sd, ci = mean_sd_ci95(values)
    assert mean == pytest.approx(0.97555)
    assert sd == pytest.approx(np.std(values, ddof=1))
    low, high = scipy_stats.t.interval(0.95, 3, loc=mean, scale=scipy_stats.sem(values))
    assert ci == pytest.approx((high - low) / 2)
    # By hand: t(0.975, 3) = 3.182446, sd = sqrt(9.65e-6 / 3) = 0.0017935, n = 4.
    assert ci == pytest.approx(3.182446 * 0.0017935 / 2, rel=1e-4)


def test_one_value_has_no_spread() -> None:
    mean, sd, ci = mean_sd_ci95([0.98])
    assert mean == 0.98 and math.isnan(sd) and math.isnan(ci)


def test_welch_against_scipy_and_the_degenerate_cases() -> None:
    a, b = [0.971, 0.973, 0.972], [0.978, 0.979, 0.9775]
    assert welch_p(a, b) == pytest.approx(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert welch_p(a, b) < 0.05
    assert welch_p([0.97], b) != welch_p([0.97], b)  # NaN: one seed cannot be tested
    assert welch_p([0.5, 0.5], [0.5, 0.5]) == 1.0 and welch_p([0.5, 0.5], [0.6, 0.6]) == 0.0


def test_aggregate_ranks_by_validation_and_marks_what_the_best_cannot_be_told_from() -> None:
    rows = (
        [
            {"cfg": "h32", "val": v, "test": t}
            for v, t in [(0.950, 0.99), (0.952, 0.99), (0.951, 0.99)]
        ]
        + [
            {"cfg": "h256", "val": v, "test": t}
            for v, t in [(0.978, 0.90), (0.979, 0.91), (0.977, 0.90)]
        ]
        + [{"cfg": "h128", "val": v, "test": 0.5} for v in (0.9775, 0.9790, 0.9768)]
        + [{"cfg": "broken", "val": None, "test": None}]
    )
    table = aggregate(rows, lambda r: r["cfg"], ["val", "test"], rank_by="val")
    assert [r["group"] for r in table] == ["h256", "h128", "h32"]  # test accuracy ignored
    assert [r["n"] for r in table] == [3, 3, 3]
    assert table[0]["val_mean"] == pytest.approx(0.978)
    assert table[0]["indistinguishable_from_best"] is True
    assert table[1]["indistinguishable_from_best"] is True  # within the seed-to-seed spread
    assert table[2]["indistinguishable_from_best"] is False
    assert len(table[2]["members"]) == 3
