"""Hydra multirun sweeps: train and evaluate every combination, compare them in MLflow.

Each combination of the overrides is a job: `sweep.seeds` models (seeds seed, seed+1, ...)
trained and evaluated by the same core as `dvc repro`, each a child MLflow run under one parent
run per sweep, which holds summary.csv (mean, spread and 95% interval per configuration) and the
comparison figures. The sweep folder is multirun/<date>/<time>/. It exits non-zero if a job
failed. Without -m, the overrides run as a sweep all the same.

Config groups (conf/): data=mnist|fashion_mnist; model=mlp|cnn; train=default;
tracking=local|server; hydra/launcher=basic|joblib|ray_cluster|slurm.
Presets: +grid=hidden_epochs (the standard 5 x 4 grid); +search=optuna (an Optuna TPE search,
hydra.sweeper.n_trials=N).
Keys most often swept: model.hidden_units, train.epochs, train.learning_rate,
train.batch_size, train.optimizer, seed; sweep.seeds=N (models per configuration).

Examples:
  uv run python -m pipeline.sweep -m model.hidden_units=32,64,128 train.epochs=1,3
  uv run python -m pipeline.sweep +grid=hidden_epochs sweep.seeds=3
  uv run python -m pipeline.sweep +search=optuna hydra.sweeper.n_trials=20

Hydra's own options: --cfg job (print the composed config), --hydra-help, --info.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

USAGE = "uv run python -m pipeline.sweep [-m] [OVERRIDE ...]"
# Hydra's options that only print: they run no sweep, so they need no -m.
PRINT_ONLY = ("--cfg", "-c", "--info", "-i", "--hydra-help", "--shell-completion", "-sc")


def cli(argv: list[str] | None = None) -> None:
    """`python -m pipeline.sweep`: this help for --help, else Hydra in multirun mode."""
    argv = sys.argv[1:] if argv is None else argv
    if "--help" in argv or "-h" in argv:
        print(f"usage: {USAGE}\n\n{__doc__.strip()}")
        return
    if not {"-m", "--multirun"} & set(argv) and not set(PRINT_ONLY) & set(argv):
        argv = ["-m", *argv]  # a sweep of one job, never Hydra's "run" mode
    if not any(a.startswith(("+search=", "hydra/sweeper=", "search=")) for a in argv):
        # epoch counts share one training (plan.py); beside the other overrides, since
        # Hydra's argument parser takes them in one run
        at = next((i for i, a in enumerate(argv) if "=" in a and not a.startswith("-")), None)
        at = len(argv) if at is None else at
        argv = [*argv[:at], "hydra/sweeper=sharing", *argv[at:]]
    sys.argv = [sys.argv[0], *argv]
    _run()


def task(cfg: Any) -> float | None:
    """Hydra's task function: one job (module-level, so launchers can ship it to workers)."""
    from pipeline.sweeps.job import run_job

    return run_job(cfg)


def _run() -> None:
    import warnings

    import hydra

    from pipeline.core.console import quiet
    from pipeline.core.errors import exit_now, raise_interrupt
    from pipeline.core.paths import CONF_DIR
    from pipeline.sweeps.finishing import abandon, ran_jobs, wait_for_evaluations

    main = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(task)
    quiet()
    # Under `uv run`, Ray would ship each job a copy of the project, without its git-ignored,
    # DVC-tracked data, and install an environment into it. Jobs use the project folder and the
    # environment the nodes share instead (conf/hydra/launcher/ray_cluster.yaml).
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    # SIGTERM interrupts like Ctrl-C for the whole sweep, between jobs and in its summary too:
    # the runs it opened are then closed, never left RUNNING by a process that just vanished.
    signal.signal(signal.SIGTERM, raise_interrupt)
    # The Optuna sweeper builds its search space from distributions Optuna 3 deprecated.
    warnings.filterwarnings("ignore", ".*Distribution has been deprecated", FutureWarning)
    try:
        main()  # a sweep that failed has exited by now, through Hydra or `stop`
    finally:
        # Interrupted, the models already handed to the background still finish, and their
        # jobs are recorded, before the interpreter starts shutting down: by then its thread
        # pools refuse new work, which MLflow's logging needs. Interrupted again meanwhile,
        # the models not yet evaluated end KILLED.
        try:
            wait_for_evaluations()
        except KeyboardInterrupt as again:
            abandon(again)
            raise
    if ran_jobs():  # no launcher's workers to shut down, every run closed
        exit_now()


if __name__ == "__main__":
    cli()
