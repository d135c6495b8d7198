"""Aggregates over seeds: mean, spread, 95% confidence interval, and which configurations the data
cannot tell apart from the best.

The method: each configuration's mean over its seeds, with the half-width of a 95% Student-t
interval (t(0.975, n-1) x sd / sqrt(n)); a configuration is `indistinguishable_from_best` when
Welch's t-test of its seeds against the best configuration's (by mean validation accuracy) gives
p >= 0.05. With one seed per configuration there is no spread to measure: no interval, no test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats

ALPHA = 0.05


def mean_sd_ci95(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean, sample standard deviation and the half-width of the 95% t-interval of the mean.

    One value has no spread: its sd and half-width are NaN.
    """
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan
    if n == 1:
        return float(x[0]), math.nan, math.nan
    sd = float(x.std(ddof=1))
    return float(x.mean()), sd, float(stats.t.ppf(1 - ALPHA / 2, n - 1) * sd / math.sqrt(n))


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test that `a` and `b` have the same mean (NaN if n < 2)."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if np.std(a) == 0 and np.std(b) == 0:  # no spread at all: equal means or plainly not
        return 1.0 if np.mean(a) == np.mean(b) else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def aggregate(
    rows: Sequence[dict[str, Any]],
    key: Callable[[dict[str, Any]], str],
    metrics: Sequence[str],
    rank_by: str,
) -> list[dict[str, Any]]:
    """One row per group of `rows` (grouped by `key`), best mean `rank_by` first.

    Each row: `group`, `n`, and for every metric `<m>_mean`, `<m>_std`, `<m>_ci95`; then
    `indistinguishable_from_best` (True, False, or None where it cannot be tested) for
    `rank_by`, and `members`, the rows it aggregates. Rows missing `rank_by` (failed runs) are
    left out.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get(rank_by) is not None:
            groups.setdefault(key(row), []).append(row)
    table = []
    for name, members in groups.items():
        out: dict[str, Any] = {"group": name, "n": len(members)}
        for metric in metrics:
            values = [m[metric] for m in members if m.get(metric) is not None]
            mean, sd, ci = mean_sd_ci95(values)
            out |= {f"{metric}_mean": mean, f"{metric}_std": sd, f"{metric}_ci95": ci}
        out["members"] = members
        table.append(out)
    table.sort(key=lambda r: -r[f"{rank_by}_mean"])
    best = [m[rank_by] for m in table[0]["members"]] if table else []
    for row in table:
        p = welch_p([m[rank_by] for m in row["members"]], best)
        row["indistinguishable_from_best"] = None if math.isnan(p) else bool(p >= ALPHA)
    return table
