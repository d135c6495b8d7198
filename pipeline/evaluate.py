"""Stage evaluate: score the trained model on the 10,000 test digits and draw what it got wrong.

Inputs: models/model.keras and models/run.json (from train), reports/history.csv,
data/processed/test.npz; `tracking` from params.yaml.
Outputs: reports/metrics.json (test_accuracy, test_loss, macro_f1, per-class precision, recall
and F1), reports/predictions.csv (true and predicted label per digit: the DVC confusion plot)
and reports/figures/*.png, all logged to the MLflow run that train started. The model becomes a
new version of `tracking.registered_model`, and the `champion` alias moves to it if it is the best.
Command: `uv run dvc repro evaluate` (or `uv run python -m pipeline.evaluate`).
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np

from pipeline.config import load_params
from pipeline.console import load_keras
from pipeline.data import load_split
from pipeline.errors import run_cli
from pipeline.paths import HISTORY_CSV, MODEL_PATH, PROCESSED_DIR, RUN_FILE, project_root


def predict_in_worker(path: Path, sha256: str | None, x: np.ndarray) -> np.ndarray:
    """`model.predict_file`, imported here so that only the worker loads TensorFlow."""
    from pipeline.model import predict_file

    return predict_file(path, sha256, x)


def main() -> None:
    cfg = load_params()  # before the heavy imports: a bad value fails in a second
    root = project_root()
    test = load_split(root / PROCESSED_DIR, "test")
    # TensorFlow and MLflow take seconds each to import: a worker imports TensorFlow while this
    # process imports MLflow and opens the run, then predicts. Leaving the block stops it.
    with multiprocessing.get_context("spawn").Pool(1, load_keras) as worker:
        from pipeline import experiment, tracking

        t = cfg.tracking
        tracking.setup(t.experiment_name, t.uri, t.registered_model)
        run = tracking.read_run(root / RUN_FILE)
        tags = run.data.tags
        with tracking.tracked_run(run_id=run.info.run_id) as run_id:
            digest = tags.get(tracking.MODEL_SHA256_TAG)
            probs = worker.apply(predict_in_worker, (root / MODEL_PATH, digest, test[0]))
            history = experiment.read_history(root / HISTORY_CSV)
            done = experiment.evaluate(
                cfg, probs, tags[tracking.MODEL_URI_TAG], history, test, run_id, root
            )
    scores = done.report
    print(
        f"evaluate: test_accuracy {scores[tracking.TEST_ACCURACY]:.4f}, "
        f"test_loss {scores[tracking.TEST_LOSS]:.4f}, macro_f1 {scores[tracking.MACRO_F1]:.4f} "
        f"-> reports/metrics.json, MLflow run {run_id}, registered "
        f"{cfg.tracking.registered_model} version {done.registered_version}"
        + (" (new champion)" if done.champion else "")
    )


if __name__ == "__main__":
    run_cli(main, skip_teardown=True)
