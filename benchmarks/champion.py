"""Benchmark: how often one seed of the default configuration displaces another as champion.

The registry promotes a challenger only when McNemar's one-sided exact test on the validation
split says it is right more often than the champion (p < 0.05, tracking/registry.py). Two seeds
of one configuration are two models, and a seed can be better than another; this measures how
often it happens, over `PAIRS` pairs of seeds (5 epochs on all training digits, as `dvc repro`
trains), so that tests/test_champion.py can bound its 10 pairs well above the measured rate.
Writes `benchmarks/champion.json`: the pairs, the promotions, the rate with its 95%
Clopper-Pearson interval, and the chance that 10 pairs promote more than the test allows, at
that rate and at the interval's upper end. About 4 minutes on 2 cores. Command: `uv run python
benchmarks/champion.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

from run import machine, timed  # noqa: E402
from test_champion import ALLOWED, SEED_PAIRS, TEST_PAIRS  # noqa: E402

from helpers import copy_project, run_env  # noqa: E402

RESULTS = ROOT / "benchmarks" / "champion.json"
PAIRS, FIRST_SEED, EPOCHS = 40, 1000, 5  # seeds other than the test's 42-61


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    mirror = os.environ.get("MNIST_MIRROR") or str(ROOT.parent / "shared" / "data" / "mnist")
    work = Path(tempfile.mkdtemp(prefix="mnist-champion-"))
    try:
        project = copy_project(work / "project")
        env = run_env(MNIST_MIRROR=mirror)
        timed([sys.executable, "-m", "dvc", "repro", "preprocess"], project, env)
        args = [str(EPOCHS), str(FIRST_SEED), str(PAIRS)]
        seconds, _, out = timed([sys.executable, "-c", SEED_PAIRS, *args], project, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = summary(json.loads(out.strip().splitlines()[-1]), seconds)
    print(json.dumps({k: v for k, v in results.items() if k != "pairs_detail"}, indent=1))
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


def summary(pairs: list, seconds: float) -> dict:
    """The promotions among `pairs` (only challenger right, only champion right, p), their
    rate with its 95% Clopper-Pearson interval, and the chance that the test's pairs promote
    more than it allows, at that rate and at the interval's upper end."""
    from scipy.stats import binom, binomtest

    promoted = sum(p < 0.05 for _, _, p in pairs)
    interval = binomtest(promoted, len(pairs)).proportion_ci(0.95)
    rate = promoted / len(pairs)
    return {
        "machine": machine(),
        "epochs": EPOCHS,
        "pairs": len(pairs),
        "promoted": promoted,
        "rate": round(rate, 3),
        "rate_ci95": [round(interval.low, 3), round(interval.high, 3)],
        "test_pairs": TEST_PAIRS,
        "test_allows": ALLOWED,
        "test_fails_at_rate": round(float(binom.sf(ALLOWED, TEST_PAIRS, rate)), 4),
        "test_fails_at_ci_high": round(float(binom.sf(ALLOWED, TEST_PAIRS, interval.high)), 4),
        "seconds": round(seconds),
        "pairs_detail": pairs,
    }


if __name__ == "__main__":
    main()
