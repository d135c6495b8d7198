"""The sweep's own side, in the process that launches the jobs: before them, the prepared data
and the parent run; after them, the summary, its figures, the registered best, and the exit code.

Hydra calls `SweepCallback` (named in conf/config.yaml) at the start and the end of a multirun.
"""

from __future__ import annotations

import atexit
import json
import math
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from pipeline.core import names
from pipeline.core.config import ConfigError, validate
from pipeline.core.console import load_keras
from pipeline.core.data import write_json
from pipeline.core.errors import PipelineError
from pipeline.core.paths import project_root
from pipeline.sweeps import search
from pipeline.sweeps.capacity import check_capacity, ships_jobs
from pipeline.sweeps.finishing import draw_aside, prepare_jobs, wait_for_evaluations
from pipeline.sweeps.job import (
    failures,
    in_process,
    job_outcomes,
    load_training_data,
    plain,
    reason,
)


class SweepCallback(Callback):
    """Runs in the launching process: prepares data and the parent run, then the summary."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._or_stop(self._start, config, "the sweep could not start")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._or_stop(self._end, config, "the sweep's summary failed")

    def _or_stop(self, step: Any, config: DictConfig, failed: str) -> None:
        """Hydra turns a callback's exception into a warning and goes on: end the sweep."""
        try:
            step(config)
        except Exception as exc:
            wait_for_evaluations()
            self._close(exc)
            jobs = job_outcomes(Path(config.hydra.sweep.dir))
            stop(f"{failed}: {reason(exc)}{failures(jobs)[1]}")

    def _start(self, config: DictConfig) -> None:
        from pipeline.tracking import provenance, runs, store

        root = project_root()
        sweep_dir = Path(config.hydra.sweep.dir)
        earlier = sweep_dir / names.PARENT_FILE
        if earlier.exists() and not search.is_search(config.hydra.sweeper):
            raise ConfigError(
                f"hydra.sweep.dir {sweep_dir} already holds a sweep ({earlier}); only a search "
                "(+search=optuna) continues in its folder. Leave hydra.sweep.dir out to start a "
                "new one."
            )
        command = [sys.executable, "-m", "dvc", "repro", "preprocess"]
        preprocess = subprocess.Popen(command, cwd=root)
        jobs_here = in_process(config.hydra.launcher)
        try:  # meanwhile, what does not need the data
            if jobs_here:  # the jobs run in this process: their background, TensorFlow
                prepare_jobs()
                load_keras()
            t = config.tracking
            experiment_id = store.setup(
                t.experiment_name, t.uri, t.registered_model, t.server_wait_s
            )
        finally:
            if preprocess.wait() != 0:
                raise subprocess.CalledProcessError(preprocess.returncode, preprocess.args)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(1) as pool:  # the data loads while the parent run opens
            loaded = pool.submit(load_training_data, config, root) if jobs_here else None
            # A resumed search goes on under its parent run.
            resumed = json.loads(earlier.read_text(encoding="utf-8")) if earlier.exists() else {}
            parent_id = runs.open_run(
                experiment_id,
                f"sweep-{sweep_dir.parent.name}-{sweep_dir.name}",
                {
                    names.SWEEP_TAG: names.SWEEP_PARENT,
                    names.OVERRIDES_TAG: " ".join(config.hydra.overrides.task),
                    **provenance.git_state(root),
                    **provenance.source(root, "pipeline/sweep.py"),
                },
                run_id=resumed.get("run_id"),
            )
            # If the sweep itself dies, the parent must not stay RUNNING.
            self.parent_id: str | None = parent_id
            atexit.register(self._close, RuntimeError("the sweep ended before its summary"))
            # Jobs log where the parent does, wherever a launcher runs them.
            info = {
                "workspace": str(root),
                "run_id": parent_id,
                "experiment_id": experiment_id,
                "tracking_uri": store.tracking_uri(config.tracking.uri),
            }
            if ships_jobs(config.hydra.launcher):
                info = shipped(config, root, info)
            write_json(sweep_dir / names.PARENT_FILE, info)
            check_capacity(config.hydra.launcher)  # a job no node can hold: now
            if loaded is not None:
                loaded.result()

    def _close(self, error: BaseException | None = None) -> None:
        from pipeline.tracking import runs, store

        parent_id, self.parent_id = getattr(self, "parent_id", None), None
        if parent_id is None:
            return
        try:
            store.check_store()
            runs.close_run(parent_id, error)
        except Exception as exc:  # the store is gone: say how to close it later
            print(
                f"sweep: could not close the parent run {parent_id} ({reason(exc)}); "
                "`uv run python -m pipeline.runs --cleanup` closes it once the store answers.",
                file=sys.stderr,
            )

    def _end(self, config: DictConfig) -> None:
        from pipeline.sweeps.summary import (
            METHOD,
            SUMMARY_COLUMNS,
            format_summary,
            leaderboard,
            save_sweep_figures,
            summarise,
            write_csv,
        )
        from pipeline.tracking import runs, store

        wait_for_evaluations(keep_drawing=True)  # the last jobs' models, in the background
        store.check_store()
        sweep_dir = Path(config.hydra.sweep.dir)
        parent = json.loads((sweep_dir / names.PARENT_FILE).read_text(encoding="utf-8"))
        parent_id = parent["run_id"]
        lost = runs.close_orphans(
            parent["experiment_id"],
            parent_id,
            "its process ended without closing the run (a cluster node lost, a job killed); "
            "the sweep's summary says how its job ended",
        )
        if lost:
            print(
                f"sweep: {len(lost)} runs left RUNNING by a lost process ended KILLED: "
                f"{', '.join(lost)}",
                file=sys.stderr,
            )
        rows = leaderboard(parent["experiment_id"], parent_id)
        table = summarise(rows)
        write_csv(rows, sweep_dir / names.RUNS_CSV)
        write_csv(table, sweep_dir / names.SUMMARY_ARTIFACT, SUMMARY_COLUMNS)
        for name in (names.RUNS_CSV, names.SUMMARY_ARTIFACT):
            runs.log_artifact(parent_id, sweep_dir / name)
        if table:
            columns = {c: [_plain(r[c]) for r in table] for c in SUMMARY_COLUMNS}
            runs.log_table(parent_id, columns, names.SUMMARY_TABLE)
            best = table[0]
            means = {f"best_{k}": v for k, v in best.items() if k.endswith("_mean")}
            runs.log_metrics(parent_id, means)
            runs.set_tags(parent_id, {names.BEST_TAG: best["config"]})
        is_search = search.is_search(config.hydra.sweeper)
        # Drawn in the figure process, if any, while the best model is registered here.
        drawn = draw_aside(save_sweep_figures, table, not is_search, sweep_dir)
        searched = log_search(config, parent_id, sweep_dir) if is_search else {}
        for name, fig in searched.items():
            fig.savefig(sweep_dir / name, dpi=100)
        jobs = job_outcomes(sweep_dir)
        failed, reasons = failures(jobs)
        counts = {"jobs": len(jobs), "failed_jobs": len(failed), "models": len(rows)}
        runs.log_metrics(parent_id, counts)
        print(f"\nSweep {parent_id}: {len(rows)} runs, {len(table)} configurations, best first\n")
        print(format_summary(table))
        print(f"\n{METHOD}")
        if table:
            print(register_best(config, table[0], parent_id))
        for name in [*drawn.result(), *searched]:
            runs.log_artifact(parent_id, sweep_dir / name, names.FIGURES_ARTIFACT)
        print(
            f"\nsummary: {sweep_dir / names.SUMMARY_ARTIFACT} "
            f"(one row per model: {names.RUNS_CSV})"
        )
        if failed:
            self._close(PipelineError(f"{len(failed)} of {len(jobs)} jobs failed"))
            print(reasons, file=sys.stderr)
            sys.exit(1)
        self._close()


def stop(message: str) -> None:
    """End the sweep with `message` and exit status 1."""
    print(f"sweep: {message}", file=sys.stderr)
    sys.exit(1)


def shipped(config: DictConfig, root: Path, info: dict[str, Any]) -> dict[str, Any]:
    """For a launcher that ships jobs (pipeline/sweeps/shipping.py): the prepared data pushed to
    the DVC remote the jobs pull from, and what the jobs get beside the parent run: the data's
    digests, the code's git state, the remote (no secret)."""
    from pipeline.core.data import project_data_digests
    from pipeline.sweeps import shipping
    from pipeline.tracking import provenance

    settings = validate(plain(config))
    remote = shipping.jobs_remote(root)
    shipping.ship_data(root, remote)
    return {
        **info,
        "shipped": True,
        "remote": remote,
        "digests": project_data_digests(root, settings.data.raw_files),
        "git": provenance.git_state(root),
    }


def _plain(value: Any) -> Any:
    """A table cell MLflow can store as JSON: NaN becomes None."""
    return None if isinstance(value, float) and math.isnan(value) else value


def register_best(config: DictConfig, best: dict[str, Any], parent_id: str) -> str:
    """Register the best configuration's model, once per sweep: of its seeds, the one with the
    median validation accuracy. It is judged against the champion as the evaluate stage's are
    (tracking/registry.py), on the validation split the sweep trained with."""
    from pipeline.core.config import validate
    from pipeline.core.data import prepared
    from pipeline.sweeps.stats import median_seed
    from pipeline.tracking import models, registry, runs

    chosen = median_seed(best["members"], key=lambda r: r["val_accuracy"])
    run = runs.get_run(chosen["run_id"], "it was a run of this sweep.")
    settings = validate(plain(config))
    name, classes = settings.tracking.registered_model, settings.data.class_names
    limit = run.data.params.get("train.max_examples", "None")  # what the chosen model trained on
    max_examples = None if limit == "None" else int(limit)
    model_uri = run.data.tags[names.MODEL_URI_TAG]
    load_keras()
    val = prepared(project_root(), "val")
    examples = registry.Examples(
        val.labels(),
        registry.examples_sha256(val),
        models.predicted_labels(model_uri, val, classes),
        lambda uri: models.predicted_labels(uri, val, classes),
        registry.example_keys(val),
        registry.example_keys(prepared(project_root(), "train"), max_examples),
    )
    version, promoted = registry.register(
        chosen["run_id"], model_uri, name, settings.registry, examples
    )
    outcome = {names.REGISTERED_TAG: f"{name}/{version}", names.CHAMPION_TAG: promoted}
    runs.set_tags(parent_id, {k: str(v).lower() for k, v in outcome.items()})
    return (
        f"\nregistered {chosen['run_name']} (the best configuration's median seed by "
        f"val_accuracy, {chosen['val_accuracy']:.4f}, of {len(best['members'])}) as {name} "
        f"version {version}: {registry.decision(name, version)}"
    )


def log_search(config: DictConfig, parent_id: str, sweep_dir: Path) -> dict[str, Any]:
    """Keep a search's study in its parent run: the study database, a row per trial, the best
    trial's parameters as tags and its objective as `best_value`; return its history figure."""
    from pipeline.core import plots
    from pipeline.sweeps.summary import write_csv
    from pipeline.tracking import runs

    trials, best = search.study_summary(config)
    columns = list(dict.fromkeys(k for t in trials for k in t))
    write_csv(trials, sweep_dir / search.TRIALS_CSV, columns)
    for name in (search.TRIALS_CSV, search.RESULTS_FILE, search.STUDY_FILE):
        if (sweep_dir / name).exists():
            runs.log_artifact(parent_id, sweep_dir / name, search.STUDY_ARTIFACT)
    if best:
        tags = {f"{search.BEST_PREFIX}{k}": v for k, v in best["params"].items()}
        runs.set_tags(parent_id, tags | {f"{search.BEST_PREFIX}trial": best["trial"]})
        runs.log_metrics(parent_id, {"best_value": best["value"], "trials": len(trials)})
        print(
            f"\nbest trial {best['trial']} of {len(trials)}: {best['params']}, "
            f"validation accuracy {best['value']:.4f} (the mean over its seeds)"
        )
    values = [t["val_accuracy_mean"] for t in trials]
    return {"search_history.png": plots.search_history(values)}
