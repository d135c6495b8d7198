"""The experiment core's naming; the core itself runs end to end in the stage, sweep and parity
tests (test_pipeline_e2e.py, test_sweep.py)."""

import pytest

from pipeline.core.config import compose, validate
from pipeline.tracking.experiment import run_name


@pytest.mark.parametrize(
    ("overrides", "with_seed", "name"),
    [
        ([], False, "mlp-h128-e5"),
        (["model.hidden_units=256", "train.epochs=10"], True, "mlp-h256-e10-s42"),
        (["train.learning_rate=0.003"], True, "mlp-h128-e5-lr0.003-s42"),
        (["seed=43"], False, "mlp-h128-e5-s43"),
        (["train.max_examples=1000", "train.optimizer=sgd"], False, "mlp-h128-e5-sgd-n1000"),
        (["train.jit_compile=false"], False, "mlp-h128-e5-nojit_compile"),
        (["tracking.experiment_name=x", "sweep.seeds=3"], False, "mlp-h128-e5"),
        (["model=cnn"], False, "cnn-h128-e5"),
        (["model=cnn", "model.filters=[8,16]"], False, "cnn-h128-e5-f8x16"),
    ],
)
def test_run_names_say_what_sets_a_run_apart(
    overrides: list[str], with_seed: bool, name: str
) -> None:
    assert run_name(validate(compose(overrides)), with_seed) == name
