"""What `pipeline.reproduce` compares: the per-class scores the original run has, no more and no
fewer, each with its reproduced value and state, and the verdict (runs in a real MLflow store)."""

from pathlib import Path

import mlflow
import pytest

from helpers import use_store
from pipeline.tools.reproduce import compare, verdict


def made_run(client: mlflow.MlflowClient, experiment: str, classes: int) -> object:
    """A run with the scores `pipeline.reproduce` compares, for `classes` classes."""
    run_id = client.create_run(experiment).info.run_id
    scores = {"test_accuracy": 0.9, "test_loss": 0.3, "macro_f1": 0.85}
    scores |= {f"f1_class_{c}": 0.9 - c / 100 for c in range(classes)}
    for key, value in scores.items():
        client.log_metric(run_id, key, value)
    client.set_tag(run_id, "weights_sha256", "ab" * 32)
    return client.get_run(run_id)


@pytest.mark.parametrize("classes", [3, 12])
def test_a_runs_classes_are_compared_one_row_each_and_a_missing_one_fails(
    classes: int, tmp_path: Path
) -> None:
    use_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("reproduce-table")
    original = made_run(client, experiment, classes)

    rows, env_diff = compare(original, made_run(client, experiment, classes))
    per_class = [what for what, _, _ in rows if what.startswith("f1_class_")]
    assert per_class == [f"f1_class_{c}" for c in range(classes)]  # in class order: 2 before 10
    last = f"f1_class_{classes - 1}"
    assert {what: (a, b) for what, a, b in rows}[last] == pytest.approx(
        (0.9 - (classes - 1) / 100,) * 2
    )
    lines, ok = verdict(rows, env_diff)
    assert ok
    assert all(ln.endswith("identical") for ln in lines if ln.startswith("f1_class_"))

    rows, env_diff = compare(original, made_run(client, experiment, classes - 1))
    assert [what for what, _, _ in rows if what.startswith("f1_class_")] == per_class
    assert {what: b for what, _, b in rows}[last] is None  # the reproduced run lacks it
    lines, ok = verdict(rows, env_diff)
    assert not ok
    (row,) = [ln for ln in lines if ln.startswith(last)]
    assert row.split()[-2:] == ["-", "DIFFERENT"]
    others = {ln.split()[-1] for ln in lines[1:] if not ln.startswith(last)}
    assert others == {"identical", "same"}, lines  # scores and digests; the environment
