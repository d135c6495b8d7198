"""The plan of a sweep (pipeline/sweeps/plan.py): the jobs that differ only in train.epochs become
one training of the largest count that also makes the others' models; what a run records."""

from __future__ import annotations

import itertools

import pytest

from pipeline.core.config import ConfigError, compose, validate
from pipeline.sweeps.plan import own_overrides, share_epochs


def grid(hidden: list[int], epochs: list[int], *fixed: str) -> list[list[str]]:
    """Jobs as Hydra's basic sweeper makes them: every combination, in order."""
    return [
        [f"model.hidden_units={h}", f"train.epochs={e}", *fixed]
        for h, e in itertools.product(hidden, epochs)
    ]


def test_the_standard_grid_trains_each_hidden_size_once() -> None:
    jobs, said = share_epochs(grid([32, 64, 128, 256, 512], [1, 3, 5, 10]), share=True)
    assert jobs == [
        [f"model.hidden_units={h}", "train.epochs=10", "sweep.also_epochs=[1,3,5]"]
        for h in (32, 64, 128, 256, 512)
    ]
    assert said is not None and "20 configurations from 5 trainings (50 epochs, not 95)" in said


def test_what_is_not_shared() -> None:
    # No epoch counts swept: nothing to plan, nothing said.
    alone = grid([8, 16], [5])
    assert share_epochs(alone, share=True) == (alone, None)
    # Turned off, in the config or in the overrides: every job trains alone, and it is said.
    jobs = grid([8], [1, 2])
    assert share_epochs(jobs, share=False)[0] == jobs
    assert "trains alone (sweep.share_epochs=false)" in share_epochs(jobs, share=False)[1]
    off = grid([8], [1, 2], "sweep.share_epochs=false")
    assert share_epochs(off, share=True)[0] == off
    # Configurations that differ in anything else stay apart; each has its own largest count.
    mixed = [["train.learning_rate=0.01", "train.epochs=2"],
             ["train.learning_rate=0.01", "train.epochs=4"],
             ["train.learning_rate=0.1", "train.epochs=3"]]  # fmt: skip
    assert share_epochs(mixed, share=True)[0] == [
        ["train.learning_rate=0.01", "train.epochs=4", "sweep.also_epochs=[2]"],
        ["train.learning_rate=0.1", "train.epochs=3"],
    ]


def test_a_checkpoint_run_records_its_own_configuration() -> None:
    job = "model.hidden_units=32 train.epochs=10 sweep.also_epochs=[1,3,5]"
    assert own_overrides(job) == "model.hidden_units=32 train.epochs=10"
    assert own_overrides(job, 3) == "model.hidden_units=32 train.epochs=3"


@pytest.mark.parametrize("also", ["[10]", "[3,3]", "[12]"])
def test_also_epochs_must_be_below_train_epochs(also: str) -> None:
    with pytest.raises(ConfigError, match="sweep.also_epochs must be distinct epoch counts"):
        validate(compose(["train.epochs=10", f"sweep.also_epochs={also}"]))
    assert validate(compose(["train.epochs=10", "sweep.also_epochs=[1,3]"]))
