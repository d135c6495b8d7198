"""Stage train: fit the configured model and log it, its config and its history to MLflow.

Inputs: data/processed/{train,val}.npz; `seed`, `model`, `train`, `tracking` from params.yaml.
Outputs: models/model.keras, models/run.json (the MLflow run holding it), reports/history.csv
(per-epoch loss and accuracy, a DVC plot) and reports/train.json (training seconds).
Command: `uv run dvc repro train` (or `uv run python -m pipeline.train`).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.config import PARAMS_FILE, Config, load_params
from pipeline.data import data_digests, load_split, sha256_file
from pipeline.errors import run_cli
from pipeline.paths import HISTORY_CSV, MODEL_PATH, PROCESSED_DIR, TRAIN_JSON

if TYPE_CHECKING:
    import keras


def write_history(history: dict[str, list[float]], path: Path = HISTORY_CSV) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["epoch", *history])
        for epoch, row in enumerate(zip(*history.values(), strict=True), start=1):
            writer.writerow([epoch, *(f"{v:.6f}" for v in row)])


def train_logged(
    cfg: Config, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray]
) -> tuple[keras.Model, dict[str, list[float]], dict[str, float], str]:
    """Build and fit the configured model, logging to the active MLflow run as it goes.

    Logs the resolved config as params, each epoch's metrics (step = epoch), a summary
    (training seconds, examples, parameters) and the model. Returns the model, its per-epoch
    history, the summary and the logged model's URI.
    """
    import mlflow

    from pipeline import model as models
    from pipeline import tracking

    models.set_determinism(cfg.seed, cfg.train.intra_op_threads, cfg.train.inter_op_threads)
    model = models.compile_model(models.build_model(cfg.model), cfg.train)
    mlflow.log_params(tracking.flatten(cfg.to_dict()))
    history, seconds = models.fit(model, train, val, cfg.train, [tracking.epoch_logger()])
    summary = {
        "train_seconds": round(seconds, 3),
        "train_examples": len(train[1]),
        **models.describe(model),
    }
    mlflow.log_metrics(summary)
    mlflow.set_tag("weights_sha256", models.weights_sha256(model))
    model_uri = tracking.log_keras_model(model, np.asarray(val[0][:5]))
    return model, history, summary, model_uri


def main() -> None:
    cfg = load_params()
    # Imported after the config is checked, so a bad value fails in a second, not after TF loads.
    import mlflow

    from pipeline import tracking
    from pipeline.model import as_tensors, limit, save_model, set_determinism

    experiment_id = tracking.setup(
        cfg.tracking.experiment_name, cfg.tracking.uri
    )  # fails fast if unreachable
    # Threads are fixed before the first tensor starts TensorFlow; train_logged seeds again.
    set_determinism(cfg.seed, cfg.train.intra_op_threads, cfg.train.inter_op_threads)
    train = as_tensors(limit(load_split(PROCESSED_DIR, "train"), cfg.train.max_examples))
    val = as_tensors(load_split(PROCESSED_DIR, "val"))
    with tracking.model_run(
        Path.cwd(),  # the code DVC ran, also in a queued experiment's temporary copy
        Path(PARAMS_FILE).read_text(encoding="utf-8"),
        data_digests(cfg.data.files),
        experiment_id=experiment_id,
        run_name=tracking.run_name(cfg),
    ) as run:
        model, history, summary, _ = train_logged(cfg, train, val)
        save_model(model, MODEL_PATH)
        mlflow.set_tag("model_sha256", sha256_file(MODEL_PATH))
        write_history(history)
        TRAIN_JSON.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        tracking.write_run_file(run)
    print(
        f"train: {MODEL_PATH} in {summary['train_seconds']:.1f}s, "
        f"val_accuracy {history['val_accuracy'][-1]:.4f}, MLflow run {run.info.run_id}"
    )


if __name__ == "__main__":
    run_cli(main, skip_teardown=True)
