"""What `pipeline.reproduce` compares: the per-class scores the run has, no more and no fewer
(runs in a real MLflow store)."""

from pathlib import Path

import mlflow
import pytest

from helpers import use_store
from pipeline.tools.reproduce import compare


@pytest.mark.parametrize("classes", [3, 12])
def test_a_runs_classes_are_compared_one_row_each(classes: int, tmp_path: Path) -> None:
    use_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("reproduce-table")
    made = []
    for accuracy in (0.9, 0.8):
        run_id = client.create_run(experiment).info.run_id
        scores = {"test_accuracy": accuracy, "test_loss": 0.3, "macro_f1": 0.85}
        scores |= {f"f1_class_{c}": accuracy - c / 100 for c in range(classes)}
        for key, value in scores.items():
            client.log_metric(run_id, key, value)
        client.set_tag(run_id, "weights_sha256", "ab" * 32)
        made.append(client.get_run(run_id))
    rows, _ = compare(*made)
    per_class = [what for what, _, _ in rows if what.startswith("f1_class_")]
    assert per_class == [f"f1_class_{c}" for c in range(classes)]  # in class order: 2 before 10
    original = {what: a for what, a, _ in rows}
    assert original[f"f1_class_{classes - 1}"] == pytest.approx(0.9 - (classes - 1) / 100)
