"""Stage train: fit the configured model and log it, its config and its history to MLflow.

Inputs: data/processed/{train,val}.npz; `seed`, `model`, `train`, `tracking` from params.yaml.
Outputs: models/model.keras, models/run.json (the MLflow run holding it), reports/history.csv
(per-epoch loss and accuracy, a DVC plot) and reports/train.json (training seconds).
Command: `uv run dvc repro train` (or `uv run python -m pipeline.train`).
"""

from __future__ import annotations

import sys

from pipeline.core.config import load_params
from pipeline.core.console import load_keras
from pipeline.core.errors import command_parser, run_cli
from pipeline.core.paths import RUN_FILE, project_root


def main(argv: list[str]) -> None:
    command_parser("train", __doc__).parse_args(argv)
    cfg = load_params()  # before the heavy imports: a bad value fails in a second
    load_keras()
    from pipeline.core import names
    from pipeline.tracking import experiment, runs, store

    root = project_root()  # the code DVC ran, also in a queued experiment's temporary copy
    t = cfg.tracking  # on a server, checks the user may write what the run will
    where = experiment.Destination(
        root, root, store.setup(t.experiment_name, t.uri, t.registered_model, t.server_wait_s)
    )
    with experiment.model_run(cfg, where) as run_id:
        trained = experiment.train_model(cfg, where, run_id)
        runs.write_run_file(run_id, where.experiment_id, root / RUN_FILE)
    print(
        f"train: models/model.keras in {trained.summary[names.TRAIN_SECONDS]:.1f}s, "
        f"val_accuracy {trained.history[names.VAL_ACCURACY][-1]:.4f}, MLflow run {run_id}"
    )


def cli() -> None:
    run_cli(main, sys.argv[1:], skip_teardown=True)


if __name__ == "__main__":
    cli()
