"""The registry's decision (pipeline/tracking/registry.py `decide`): whether a challenger takes
the champion alias, and the evidence it records, on a real sqlite store, from predictions made
up for each case (1,000 examples, all of class 0; a model "right on the first n")."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest

from helpers import use_store
from pipeline.core import names
from pipeline.core.config import RegistryConfig
from pipeline.core.errors import PipelineError
from pipeline.tracking import registry

N = 1000
LABELS = np.zeros(N, dtype=np.int64)
KEYS = np.arange(N, dtype=np.uint64)


def right_on_first(n: int) -> np.ndarray:
    return np.where(np.arange(N) < n, 0, 1)  # nested: the pairs disagree only past the first n


def examples(challenger: int, champion, trained_on: np.ndarray | None = None) -> registry.Examples:
    score = champion if callable(champion) else (lambda uri: right_on_first(champion))
    seen = np.zeros(0, np.uint64) if trained_on is None else trained_on
    return registry.Examples(LABELS, "sha", right_on_first(challenger), score, KEYS, seen)


def first_champion(tmp_path: Path, name: str, trained_on: np.ndarray | None = None) -> str:
    """Register version 1 of `name` in a fresh sqlite store: the champion, right on 900 of the
    1,000, having trained on `trained_on` (none by default); returns its run."""
    use_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    experiment = client.create_experiment(name, artifact_location=str(tmp_path / "mlruns"))
    run_id = client.create_run(experiment).info.run_id
    logged = mlflow.initialize_logged_model(
        name="model", source_run_id=run_id, experiment_id=experiment
    )
    rule = RegistryConfig(promote="significant", alpha=0.05)
    version, promoted = registry.register(
        run_id, f"models:/{logged.model_id}", name, rule, examples(900, 0, trained_on)
    )
    assert (version, promoted) == ("1", True)
    return run_id


@pytest.fixture
def champion(tmp_path: Path) -> str:
    """A registered model `decide` whose version 1 is the champion, right on 900 of the 1,000
    and trained on none of them; returns the model's name."""
    first_champion(tmp_path, "decide")
    return "decide"


@pytest.mark.parametrize(
    ("promote", "alpha", "challenger", "taken", "only_this"),
    [
        ("significant", 0.05, 950, True, 50),  # 50 to 0: p = 2^-50
        ("significant", 0.05, 905, True, 5),  # 5 to 0: p = 2^-5 = 0.031
        ("significant", 0.01, 905, False, 5),  # ... above a stricter alpha
        ("significant", 0.05, 900, False, 0),  # they never disagree: p = 1
        ("significant", 0.05, 800, False, 0),  # worse
        ("best", 0.05, 901, True, 1),  # one more right is enough for "best"
        ("best", 0.05, 900, False, 0),
    ],
)
def test_a_challenger_takes_the_alias_only_on_the_rules_evidence(
    champion: str, promote: str, alpha: float, challenger: int, taken: bool, only_this: int
) -> None:
    rule = RegistryConfig(promote=promote, alpha=alpha)
    evidence, promoted = registry.decide(champion, "1", rule, examples(challenger, 900))
    assert bool(promoted) == taken
    assert evidence[names.PROMOTION_ONLY_THIS] == only_this
    assert evidence[names.PROMOTION_ONLY_CHAMPION] == max(0, 900 - challenger)
    assert evidence[names.PROMOTION_ACCURACY] == challenger / N
    assert evidence[names.PROMOTION_CHAMPION_ACCURACY] == 0.9
    assert evidence[names.PROMOTION_DECISION] == (names.PROMOTED if taken else "kept champion v1")


def test_never_registers_only_and_a_champion_that_cannot_be_scored_gives_way(
    champion: str,
) -> None:
    never = RegistryConfig(promote="never", alpha=0.05)
    evidence, promoted = registry.decide(champion, "1", never, examples(1000, 900))
    assert not promoted and evidence[names.PROMOTION_DECISION].startswith("registered only")

    def unscorable(uri: str) -> np.ndarray:
        raise PipelineError(f"{uri} expects pictures of 32 x 32")

    rule = RegistryConfig(promote="significant", alpha=0.05)
    evidence, promoted = registry.decide(champion, "1", rule, examples(100, unscorable))
    assert promoted  # even a worse challenger: the champion cannot be compared any more
    said = evidence[names.PROMOTION_DECISION]
    assert said.startswith("promoted: champion v1 cannot be scored") and "32 x 32" in said


def test_a_champion_is_judged_only_on_the_examples_it_did_not_train_on(tmp_path: Path) -> None:
    # the champion trained on the first 950 (where the challenger wins)
    run_id = first_champion(tmp_path, "seen", KEYS[:950])
    client = mlflow.MlflowClient()
    rule = RegistryConfig(promote="significant", alpha=0.05)
    evidence, promoted = registry.decide("seen", "1", rule, examples(950, 900))
    assert not promoted  # on the 50 it never saw, both are wrong
    assert (
        evidence[names.PROMOTION_EXAMPLES]
        == "50 validation examples (950 the champion trained on left out)"
    )
    everything = examples(1000, 900)
    client.set_registered_model_alias("seen", names.CHAMPION, "1")
    registry.keep_training_keys(run_id, KEYS)
    evidence, promoted = registry.decide("seen", "1", rule, everything)
    assert (
        promoted and "trained on every one of these examples" in evidence[names.PROMOTION_DECISION]
    )
