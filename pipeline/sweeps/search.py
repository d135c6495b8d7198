"""Hyperparameter search: Hydra's Optuna sweeper, resumable, and what the parent run keeps of it.

`conf/search/optuna.yaml` selects Hydra's Optuna sweeper. Each trial is a sweep job
(`pipeline.sweep`): a configuration trained `sweep.seeds` times, its objective the mean
validation accuracy. The study is stored in `study.db` in the sweep folder; running the preset
again with that folder as `hydra.sweep.dir` adds trials to the same study, under the same parent
run (job folders are named by their parameters, so a resumed study's folders add to the first's).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

RESULTS_FILE = "optimization_results.yaml"  # written by Hydra's Optuna sweeper
STUDY_FILE = "study.db"  # the study's sqlite storage, as conf/search/optuna.yaml names it
STUDY_ARTIFACT = "study"  # where the parent run keeps these files
TRIALS_CSV = "trials.csv"  # in the sweep folder and the parent run: one row per trial
BEST_PREFIX = "search.best."  # parent run tags: the best trial's parameters


def is_search(sweeper: DictConfig) -> bool:
    """Whether Hydra's sweeper (`hydra.sweeper`) is the Optuna one."""
    return str(sweeper.get("_target_", "")).endswith("OptunaSweeper")


def study_summary(config: DictConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The study's trials (number, state, value, parameters), and the best one's number, value
    and parameters ({} while no trial has finished)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sweeper = config.hydra.sweeper
    study = optuna.load_study(study_name=sweeper.study_name, storage=sweeper.storage)
    trials = [
        {
            "trial": t.number,
            "state": t.state.name,
            "val_accuracy_mean": t.value,
            **t.params,
            "seconds": t.duration.total_seconds() if t.duration else None,
        }
        for t in study.trials
    ]
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = {}
    if done:
        top = study.best_trial
        best = {"trial": top.number, "value": top.value, "params": dict(top.params)}
    return trials, best
