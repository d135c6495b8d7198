"""Aggregates over seeds: mean, spread, 95% confidence interval, and which configurations the data
cannot tell apart from the best.

The method: each configuration's mean over its seeds, with the half-width of a 95% Student-t
interval (t(0.975, n-1) x sd / sqrt(n)). The best is the configuration with the highest mean
among those with the most finished seeds (a mean over fewer seeds is noisier, and a NaN mean is
never best). Every other configuration is compared with it by Welch's two-sided t-test, and the
p-values of all these comparisons are adjusted together by Holm's step-down procedure, so that
the chance of calling any configuration of a grid worse than the best when none is stays near
`ALPHA` (measured in tests/test_stats.py; docs/sweeps.md gives the rates). A configuration whose
adjusted p-value is at least `ALPHA` "cannot be told apart from the best": the seeds do not show a
difference, which is not evidence that there is none. With one seed there is no spread to
measure: no interval, no test.

NumPy and SciPy only: importing this module loads neither MLflow nor TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

ALPHA = 0.05


def median_seed(seeds: Sequence[Any], key: Callable[[Any], float]) -> Any:
    """A configuration's representative model: of its seeds, the one with the median `key`
    (validation accuracy), the lower of the two middle ones for an even count. The sweep
    registers the best configuration's, and draws each configuration's figures."""
    ranked = sorted(seeds, key=key)
    return ranked[(len(ranked) - 1) // 2]


BEST, UNTOLD, WORSE, HIGHER, UNTESTED = (
    "best",
    "cannot be told apart from the best",
    "worse than the best",
    "higher than the best, on fewer seeds",
    "not tested (one seed)",
)
VERDICT = "vs_best_welch_holm"  # the verdict column: the procedure is in its name
METHOD = (
    f"{VERDICT}: Welch's two-sided t-test of each configuration's seeds against the best's, the "
    f"p-values Holm-adjusted over all the comparisons (family-wise alpha = {ALPHA}). The best "
    "has the highest mean among the configurations with the most seeds."
)


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
    from scipy import stats  # half a second to import: not for a sweep's start

    return float(x.mean()), sd, float(stats.t.ppf(1 - ALPHA / 2, n - 1) * sd / math.sqrt(n))


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test that `a` and `b` have the same mean (NaN if n < 2)."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    if va == 0 and vb == 0:  # no spread at all: equal means or plainly not
        return 1.0 if x.mean() == y.mean() else 0.0
    t = (x.mean() - y.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(x) - 1) + vb**2 / (len(y) - 1))
    from scipy import stats

    return float(2 * stats.t.sf(abs(t), df))  # as scipy.stats.ttest_ind(equal_var=False)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of `pvalues` (NaN stays NaN and is not counted): the
    smallest of m is multiplied by m, the next by m - 1, ..., each at least the one before,
    at most 1. Rejecting where the adjusted p < alpha bounds the family-wise error by alpha."""
    p = np.asarray(pvalues, dtype=float)
    tested = np.flatnonzero(~np.isnan(p))
    adjusted = np.full(len(p), math.nan)
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    running = 0.0
    for i, index in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()


def aggregate(
    rows: Sequence[dict[str, Any]],
    key: Callable[[dict[str, Any]], str],
    metrics: Sequence[str],
    rank_by: str,
) -> list[dict[str, Any]]:
    """One row per group of `rows` (grouped by `key`), the best first, then by mean `rank_by`.

    Each row: `group`, `n`, `fewer_seeds` (n below the most any group has), and for every metric
    `<m>_mean`, `<m>_std`, `<m>_ci95`; then, for `rank_by`, `p_vs_best` (Welch), `p_vs_best_holm`
    (adjusted over the table) and the verdict `VERDICT` (one of BEST, UNTOLD, WORSE, HIGHER,
    UNTESTED); and `members`, the rows it aggregates. Rows missing `rank_by` (failed runs) are
    left out.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        value = row.get(rank_by)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
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
    if not table:
        return table
    most = max(r["n"] for r in table)
    for row in table:
        row["fewer_seeds"] = row["n"] < most

    def score(row: dict[str, Any]) -> float:
        mean = row[f"{rank_by}_mean"]
        return -math.inf if math.isnan(mean) else mean

    best = max((r for r in table if not r["fewer_seeds"]), key=score)
    table.sort(key=lambda r: (r is not best, -score(r)))
    best_values = [m[rank_by] for m in best["members"]]
    others = table[1:]
    raw = [welch_p([m[rank_by] for m in r["members"]], best_values) for r in others]
    best.update(p_vs_best=math.nan, p_vs_best_holm=math.nan)
    best[VERDICT] = BEST
    for row, p, adjusted in zip(others, raw, holm(raw), strict=True):
        row.update(p_vs_best=p, p_vs_best_holm=adjusted)
        if math.isnan(adjusted):
            row[VERDICT] = UNTESTED
        elif adjusted >= ALPHA:
            row[VERDICT] = UNTOLD
        else:
            row[VERDICT] = WORSE if score(row) < score(best) else HIGHER
    return table
