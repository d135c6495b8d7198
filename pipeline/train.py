"""Stage train: fit the configured model and log it, its config and its history to MLflow.

Inputs: data/processed/{train,val}.npz; `seed`, `model`, `train`, `tracking` from params.yaml.
Outputs: models/model.keras, models/run.json (the MLflow run holding it), reports/history.csv
(per-epoch loss and accuracy, a DVC plot) and reports/train.json (training seconds).
Command: `uv run dvc repro train` (or `uv run python -m pipeline.train`).
"""

from __future__ import annotations

from pipeline.config import load_params
from pipeline.console import load_keras
from pipeline.data import data_digests, load_split
from pipeline.errors import run_cli
from pipeline.paths import PARAMS_FILE, PROCESSED_DIR, RUN_FILE, project_root


def main() -> None:
    cfg = load_params()  # before the heavy imports: a bad value fails in a second
    load_keras()
    from pipeline import experiment, tracking
    from pipeline.model import as_tensors, limit

    root = project_root()
    t = cfg.tracking  # on a server, checks the user may write what the run will
    experiment_id = tracking.setup(t.experiment_name, t.uri, t.registered_model)
    experiment.start(cfg)
    train = as_tensors(limit(load_split(root / PROCESSED_DIR, "train"), cfg.train.max_examples))
    val = as_tensors(load_split(root / PROCESSED_DIR, "val"))
    with tracking.model_run(
        root,  # the code DVC ran, also in a queued experiment's temporary copy
        (root / PARAMS_FILE).read_text(encoding="utf-8"),
        data_digests(cfg.data.files, root),
        experiment_id,
        experiment.run_name(cfg),
    ) as run_id:
        trained = experiment.train(cfg, train, val, run_id, root)
        tracking.write_run_file(run_id, experiment_id, root / RUN_FILE)
    print(
        f"train: models/model.keras in {trained.summary[tracking.TRAIN_SECONDS]:.1f}s, "
        f"val_accuracy {trained.history[tracking.VAL_ACCURACY][-1]:.4f}, MLflow run {run_id}"
    )


if __name__ == "__main__":
    run_cli(main, skip_teardown=True)
