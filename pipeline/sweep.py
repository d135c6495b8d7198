"""Hydra multirun sweeps: train and evaluate every combination, compare them in MLflow.

Inputs: `conf/` with Hydra overrides; the preprocessed data of `dvc repro preprocess` (made once,
before the jobs start, from params.yaml's data settings).
Outputs: one MLflow run per combination (the same content as a `dvc repro` run), nested under one
parent run holding `summary.csv` and comparison plots; the same files and the table in the sweep
folder (`multirun/<date>/<time>/`), and the table on stdout. Exits non-zero if any job failed.
Command: `uv run python -m pipeline.sweep -m model.hidden_units=32,64,128 train.epochs=1,3`,
or the standard grid: `uv run python -m pipeline.sweep +sweep=hidden_epochs`.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pipeline.compare import OVERRIDES_TAG, PARENT_TAG, format_table, leaderboard, write_csv
from pipeline.config import (
    PARAMS_FILE,
    PROJECT_ROOT,
    ConfigError,
    load_params,
    to_yaml,
    validate,
)

PARENT_FILE = "parent_run.json"

# Under `uv run`, Ray would ship each job a copy of the project without its git-ignored,
# DVC-tracked data. Jobs use the project folder and environment that the nodes share instead.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


def plain(cfg: DictConfig) -> dict[str, Any]:
    """The job's config without Hydra's own node, as plain data."""
    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("hydra", None)
    return data


def job_name(data: dict[str, Any]) -> str:
    """`mlp-h256-e10`, read from the raw config so that a job with a bad value is named too."""
    model, train = data.get("model", {}), data.get("train", {})
    return f"{model.get('name')}-h{model.get('hidden_units')}-e{train.get('epochs')}"


def check_data_settings(data: dict[str, Any]) -> None:
    """The sweep trains on the data `dvc repro` prepared; its data settings cannot vary."""
    prepared = load_params(PROJECT_ROOT / PARAMS_FILE).data
    swept = validate(data).data
    if swept != prepared:
        raise ConfigError(
            "data.* cannot be overridden in a sweep: the jobs share the data prepared from "
            "params.yaml. Change conf/data/ and run `uv run python -m pipeline.config` instead."
        )


class SweepCallback(Callback):
    """Runs in the launching process: prepares data and the parent run, then the summary."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        import mlflow

        from pipeline import tracking

        subprocess.run(
            [sys.executable, "-m", "dvc", "repro", "preprocess"], check=True, cwd=PROJECT_ROOT
        )
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        experiment_id = tracking.setup(config.tracking.experiment_name, config.tracking.uri)
        overrides = " ".join(config.hydra.overrides.task)
        run = mlflow.start_run(
            experiment_id=experiment_id,
            run_name=f"sweep-{sweep_dir.parent.name}-{sweep_dir.name}",
            tags={
                "sweep": "parent",
                OVERRIDES_TAG: overrides,
                **tracking.process_tags(),
                **tracking.git_tags(PROJECT_ROOT),
            },
        )
        # Jobs log where the parent does, wherever a launcher runs them.
        info = {
            "run_id": run.info.run_id,
            "experiment_id": experiment_id,
            "tracking_uri": mlflow.get_tracking_uri(),
        }
        (sweep_dir / PARENT_FILE).write_text(json.dumps(info), encoding="utf-8")
        # If the sweep itself dies, the parent must not stay RUNNING.
        atexit.register(_end_if_active, "FAILED")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        import mlflow

        sweep_dir = Path(config.hydra.sweep.dir)
        parent = json.loads((sweep_dir / PARENT_FILE).read_text(encoding="utf-8"))
        rows = leaderboard(parent["experiment_id"], parent["run_id"])
        summary = sweep_dir / "summary.csv"
        write_csv(rows, summary)
        mlflow.log_artifact(str(summary))
        for name, fig in sweep_figures([r for r in rows if r["status"] == "FINISHED"]).items():
            fig.savefig(sweep_dir / name, dpi=100)
            mlflow.log_artifact(str(sweep_dir / name), "figures")
        failed = [r for r in rows if r["status"] != "FINISHED"]
        mlflow.log_metrics({"jobs": len(rows), "failed_jobs": len(failed)})
        print(f"\nSweep {parent['run_id']}: {len(rows)} runs, best first\n")
        print(format_table(rows))
        print(f"\nsummary: {summary}")
        if failed:
            reasons = "\n".join(
                f"  {r['run_name']} ({r['overrides']}): {r['failure_reason']}" for r in failed
            )
            mlflow.set_tag("failure_reason", f"{len(failed)} of {len(rows)} jobs failed")
            _end_if_active("FAILED")
            print(f"\n{len(failed)} of {len(rows)} jobs failed:\n{reasons}", file=sys.stderr)
            sys.exit(1)
        _end_if_active("FINISHED")


def _end_if_active(status: str) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.end_run(status)


def sweep_figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from pipeline import plots

    if not rows:
        return {}
    hidden = [int(r["hidden_units"]) for r in rows]
    epochs = [int(r["epochs"]) for r in rows]
    accuracy = [r["test_accuracy"] for r in rows]
    several_models = len({r["model"] for r in rows}) > 1
    groups = [
        f"{r['model']} e{r['epochs']}" if several_models else f"e{r['epochs']}" for r in rows
    ]
    return {
        "accuracy_by_hidden_units.png": plots.sweep_lines(hidden, accuracy, groups),
        "accuracy_heatmap.png": plots.sweep_heatmap(hidden, epochs, accuracy),
        "accuracy_vs_seconds.png": plots.accuracy_vs_seconds(
            [r["train_seconds"] for r in rows], accuracy, [r["run_name"] for r in rows]
        ),
    }


def run_job(cfg: DictConfig) -> float | None:
    """One combination: a child run with the same content as a `dvc repro` run.

    A failure is recorded on the run (FAILED, with its reason) and does not stop the sweep.
    """
    import keras
    import mlflow

    from pipeline import tracking
    from pipeline.data import prepared, project_data_digests
    from pipeline.evaluate import evaluate_logged
    from pipeline.model import limit, predict
    from pipeline.train import train_logged

    began = time.perf_counter()  # after the imports, which a process pays once for all its jobs
    hc = HydraConfig.get()
    data = plain(cfg)
    parent_file = Path(hc.sweep.dir) / PARENT_FILE
    parent = json.loads(parent_file.read_text()) if parent_file.exists() else None
    uri = parent["tracking_uri"] if parent else data["tracking"].get("uri")
    experiment_id = tracking.setup(data["tracking"]["experiment_name"], uri)
    tags = {OVERRIDES_TAG: " ".join(hc.overrides.task)}
    if parent:
        tags[PARENT_TAG] = parent["run_id"]
    try:
        with tracking.model_run(
            PROJECT_ROOT,
            to_yaml(data),
            project_data_digests(),
            experiment_id=experiment_id,
            run_name=job_name(data),
            tags=tags,
            nested=mlflow.active_run() is not None,  # the parent, when jobs share its process
        ):
            check_data_settings(data)
            config = validate(data)
            train = limit(prepared("train"), config.train.max_examples)
            model, history, _, model_uri = train_logged(config, train, prepared("val"))
            x, y = prepared("test")
            report = evaluate_logged(predict(model, x), x, y, history, Path(hc.runtime.output_dir))
            tracking.register(model_uri, config.tracking.registered_model, report["test_accuracy"])
            mlflow.log_metric("job_seconds", round(time.perf_counter() - began, 3))
    except Exception as exc:  # the run is FAILED; the summary reports it
        print(f"job {hc.job.num} ({job_name(data)}) failed: {exc}", file=sys.stderr)
        return None
    finally:
        keras.backend.clear_session()  # jobs may share a process: free the last graph
    return report["test_accuracy"]


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    return run_job(cfg)


if __name__ == "__main__":
    main()
