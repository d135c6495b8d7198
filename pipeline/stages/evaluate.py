"""Stage evaluate: score the trained model on the test set and draw what it got wrong.

Inputs: models/model.keras and models/run.json (from train), reports/history.csv,
data/processed/ (the test split, and the validation split the champion is judged on);
`tracking` from params.yaml.
Outputs: reports/metrics.json (test_accuracy, test_loss, macro_f1, per-class precision, recall
and F1), reports/predictions.csv (true and predicted label per image: the DVC confusion plot)
and reports/figures/*.png, all logged to the MLflow run that train started. The model becomes a
new version of `tracking.registered_model`, judged against the champion on the validation split
by `registry.promote` (tracking/registry.py); a reproduction (`pipeline.reproduce`) registers
nothing.
Command: `uv run dvc repro evaluate` (or `uv run python -m pipeline.evaluate`).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.config import load_params
from pipeline.core.console import load_keras
from pipeline.core.data import prepared
from pipeline.core.errors import command_parser, run_cli
from pipeline.core.paths import HISTORY_CSV, MODEL_PATH, RUN_FILE, project_root


def predict_in_worker(path: Path, sha256: str | None, root: Path, split: str) -> np.ndarray:
    """`model.predict_file` on a prepared split, read a chunk at a time, imported here so that
    only the worker loads TensorFlow."""
    from pipeline.core.model import predict_file

    return predict_file(path, sha256, prepared(root, split))


def labels_in_worker(store_uri: str, model_uri: str, root: Path, classes: list[str]) -> Any:
    """The labels a registered model predicts for the validation split
    (`models.predicted_labels`), here in the worker, which has TensorFlow loaded."""
    import mlflow

    from pipeline.tracking import models

    mlflow.set_tracking_uri(store_uri)
    mlflow.set_registry_uri(store_uri)
    return models.predicted_labels(model_uri, prepared(root, "val"), classes)


def main(argv: list[str]) -> None:
    command_parser("evaluate", __doc__).parse_args(argv)
    cfg = load_params()  # before the heavy imports: a bad value fails in a second
    root = project_root()
    prepared(root, "test")  # the manifest read and checked before the worker starts
    # TensorFlow and MLflow take seconds each to import: a worker imports TensorFlow while this
    # process imports MLflow and opens the run, then predicts. Leaving the block stops it.
    with multiprocessing.get_context("spawn").Pool(1, load_keras) as worker:
        import mlflow

        from pipeline.core import names
        from pipeline.tracking import experiment, provenance, registry, runs, store

        t = cfg.tracking
        where = experiment.Destination(
            root, root, store.setup(t.experiment_name, t.uri, t.registered_model, t.server_wait_s)
        )
        run = runs.read_run(root / RUN_FILE)
        tags = run.data.tags
        with runs.tracked_run(run_id=run.info.run_id) as run_id:
            digest = tags.get(names.MODEL_SHA256_TAG)
            probs = worker.apply(predict_in_worker, (root / MODEL_PATH, digest, root, "test"))
            history = experiment.read_history(root / HISTORY_CSV)
            model_uri = tags[names.MODEL_URI_TAG]
            scores = experiment.evaluate_model(cfg, where, run_id, probs, model_uri, history)
            if os.environ.get(provenance.REPRODUCES_ENV):  # it checks, it does not compete
                registered = "not registered (a reproduction)"
            else:
                val = prepared(root, "val")
                store_uri, classes = mlflow.get_tracking_uri(), cfg.data.class_names
                examples = registry.Examples(
                    val.labels(),
                    registry.examples_sha256(val),
                    worker.apply(
                        predict_in_worker, (root / MODEL_PATH, digest, root, "val")
                    ).argmax(1),
                    lambda uri: worker.apply(labels_in_worker, (store_uri, uri, root, classes)),
                    registry.example_keys(val),
                    registry.example_keys(prepared(root, "train"), cfg.train.max_examples),
                )
                name = cfg.tracking.registered_model
                version, promoted = registry.register(
                    run_id, model_uri, name, cfg.registry, examples
                )
                decision = registry.decision(name, version)
                registered = f"registered {name} version {version}: {decision}"
    print(
        f"evaluate: test_accuracy {scores[names.TEST_ACCURACY]:.4f}, "
        f"test_loss {scores[names.TEST_LOSS]:.4f}, macro_f1 {scores[names.MACRO_F1]:.4f} "
        f"-> reports/metrics.json, MLflow run {run_id}, {registered}"
    )


def cli() -> None:
    run_cli(main, sys.argv[1:], skip_teardown=True)


if __name__ == "__main__":
    cli()
