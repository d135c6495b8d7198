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

import csv
import json
import multiprocessing
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import load_params
from pipeline.data import check_model_file, load_split
from pipeline.errors import run_cli
from pipeline.paths import (
    FIGURES_DIR,
    HISTORY_CSV,
    METRICS_JSON,
    MODEL_PATH,
    PREDICTIONS_CSV,
    PROCESSED_DIR,
    REPORTS_DIR,
)

GRID = 32  # test digits shown in the predictions grid


def read_history(path: Path = HISTORY_CSV) -> dict[str, list[float]]:
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return {key: [float(r[key]) for r in rows] for key in rows[0] if key != "epoch"}


def write_predictions(y_true: np.ndarray, y_pred: np.ndarray, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["actual", "predicted"])
        writer.writerows(zip(y_true.tolist(), y_pred.tolist(), strict=True))


def evaluate_logged(
    probs: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    history: dict[str, list[float]],
    reports_dir: Path = REPORTS_DIR,
) -> dict[str, Any]:
    """Score a model's class probabilities `probs` for (x, y); write metrics, predictions and
    figures and log them to the active run.

    Writes `metrics.json`, `predictions.csv` and `figures/*.png` under `reports_dir` and returns
    the metrics (see `metrics.classification_report`).
    """
    import mlflow

    from pipeline import metrics, plots

    y_pred = probs.argmax(axis=1)
    report = metrics.classification_report(y, probs)
    figures = {
        "predictions.png": plots.prediction_grid(x[:GRID], y[:GRID], y_pred[:GRID]),
        "misclassified.png": plots.misclassified_gallery(x, y, y_pred, probs.max(axis=1)),
        "confusion_matrix.png": plots.confusion_heatmap(metrics.confusion_matrix(y, y_pred)),
        "learning_curves.png": plots.learning_curves(history),
    }
    figures_dir = reports_dir / FIGURES_DIR.name
    figures_dir.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        fig.savefig(figures_dir / name, dpi=100)
    metrics_json = reports_dir / METRICS_JSON.name
    metrics_json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    write_predictions(y, y_pred, reports_dir / PREDICTIONS_CSV.name)
    mlflow.log_metrics({k: report[k] for k in ("test_accuracy", "test_loss", "macro_f1")})
    mlflow.log_metrics({f"f1_class_{c}": v["f1"] for c, v in report["per_class"].items()})
    mlflow.log_artifacts(str(figures_dir), "figures")
    mlflow.log_artifact(str(metrics_json))
    return report


def predict_test_set(model_path: Path, processed_dir: Path) -> np.ndarray:
    """The model's class probabilities for every test digit (run in a worker process)."""
    from pipeline.model import load_model, predict

    return predict(load_model(model_path), load_split(processed_dir, "test")[0])


def main() -> None:
    cfg = load_params()
    x, y = load_split(PROCESSED_DIR, "test")
    # TensorFlow and MLflow take seconds each to import: the worker loads TensorFlow and predicts
    # while this process opens the MLflow run. Leaving the block stops the worker.
    with multiprocessing.get_context("spawn").Pool(1) as worker:
        predicted = worker.apply_async(predict_test_set, (MODEL_PATH, PROCESSED_DIR))
        from pipeline import tracking

        tracking.setup(cfg.tracking.experiment_name, cfg.tracking.uri)
        run = tracking.read_run()
        run_id = run.info.run_id
        with tracking.tracked_run(run_id=run_id):
            check_model_file(MODEL_PATH, run.data.tags.get("model_sha256"))
            report = evaluate_logged(predicted.get(), x, y, read_history())
            version, champion = tracking.register(
                run.data.tags["model_uri"], cfg.tracking.registered_model, report["test_accuracy"]
            )
    print(
        f"evaluate: test_accuracy {report['test_accuracy']:.4f}, "
        f"test_loss {report['test_loss']:.4f}, macro_f1 {report['macro_f1']:.4f} "
        f"-> {METRICS_JSON}, MLflow run {run_id}, registered {cfg.tracking.registered_model} "
        f"version {version}" + (" (new champion)" if champion else "")
    )


if __name__ == "__main__":
    run_cli(main, skip_teardown=True)
