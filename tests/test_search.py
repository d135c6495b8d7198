"""The Optuna search (`+search=optuna`) on real MNIST, small: its study kept in the parent run,
resumed from the same folder."""

import csv
from pathlib import Path

import mlflow
import pytest

from helpers import QUICK_SWEEP, assert_complete_child, parent_artifacts, run, sweep_runs_in

pytestmark = pytest.mark.slow  # real training on MNIST


def search(prepared: Path, *overrides: str, check: bool = True):
    """A 3,000-digit, 1-epoch search of `+search=optuna` into the folder `multirun/search`."""
    args = ["python", "-m", "pipeline.sweep", "+search=optuna", "hydra.sweep.dir=multirun/search"]
    fixed = ["train.max_examples=3000", "train.epochs=1", "tracking.experiment_name=search"]
    return run([*args, *fixed, "tracking.registered_model=search-digits", *overrides], prepared,
               check=check)  # fmt: skip


def test_optuna_search_keeps_its_study_in_the_parent_and_resumes(prepared: Path) -> None:
    proc = search(prepared, "hydra.sweeper.n_trials=3")
    assert "3 runs, 3 configurations" in proc.stdout and "best trial" in proc.stdout
    (parent,), children = sweep_runs_in(prepared, "search")
    parent_id = parent.info.run_id
    for child in children:
        assert_complete_child(child, parent_id, epochs=1, examples=3000)
    assert parent_artifacts(parent) >= {"figures/search_history.png", "summary.csv"}
    study = {a.path for a in mlflow.MlflowClient().list_artifacts(parent_id, "study")}
    assert study == {f"study/{f}" for f in ("study.db", "trials.csv", "optimization_results.yaml")}
    best = max(children, key=lambda c: c.data.metrics["val_accuracy"])  # one seed per trial
    assert parent.data.metrics["best_value"] == pytest.approx(best.data.metrics["val_accuracy"])
    for key in ("model.hidden_units", "train.learning_rate"):
        assert float(parent.data.tags[f"search.best.{key}"]) == float(best.data.params[key])
    assert 16 <= int(best.data.params["model.hidden_units"]) <= 512

    # The same folder again: the study goes on with new trials, under the same parent.
    search(prepared, "hydra.sweeper.n_trials=1")
    (again,), children = sweep_runs_in(prepared, "search")
    assert again.info.run_id == parent_id and again.info.status == "FINISHED"
    assert len(children) == 4 and again.data.metrics["trials"] == 4
    proposed = {(c.data.params["model.hidden_units"], c.data.params["train.learning_rate"])
                for c in children}  # fmt: skip
    assert len(proposed) == 4
    trials = list(csv.DictReader((prepared / "multirun/search/trials.csv").open()))
    assert [t["trial"] for t in trials] == ["0", "1", "2", "3"]
    assert all(t["state"] == "COMPLETE" for t in trials)

    # A grid cannot reuse a sweep's folder.
    grid = ["-m", "train.epochs=1", "hydra.sweep.dir=multirun/search", *QUICK_SWEEP]
    refused = run(
        ["python", "-m", "pipeline.sweep", *grid, "tracking.experiment_name=search"],
        prepared,
        check=False,
    )
    assert refused.returncode != 0 and "already holds a sweep" in refused.stderr
    assert len(sweep_runs_in(prepared, "search")[1]) == 4
