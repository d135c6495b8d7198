"""Hydra multirun sweeps: train and evaluate every combination, compare them in MLflow.

Inputs: `conf/` with Hydra overrides; the preprocessed data of `dvc repro preprocess` (made once,
before the jobs start, from params.yaml's data settings).
Outputs: one MLflow run per combination, made by the same core as a `dvc repro` run
(`experiment.train` and `experiment.evaluate`), nested under one parent run holding
`summary.csv` and comparison plots; the same files and the table in the sweep folder
(`multirun/<date>/<time>/`), each job's files in its own numbered folder there, and the table
on stdout. Exits non-zero if any job failed.
Command: `uv run python -m pipeline.sweep -m model.hidden_units=32,64,128 train.epochs=1,3`,
or the standard grid: `uv run python -m pipeline.sweep +sweep=hidden_epochs`.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import math
import os
import re
import subprocess
import sys
import warnings
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pipeline import search
from pipeline.config import Config, ConfigError, load_params, to_yaml, validate
from pipeline.console import load_keras, quiet
from pipeline.errors import PipelineError, exit_now
from pipeline.finishing import Finishing, finished, finishing, ran_jobs
from pipeline.paths import PARAMS_FILE, project_root

PARENT_FILE = "parent_run.json"  # in the sweep folder: where jobs log
JOB_FILE = "job.json"  # in each job's folder: how it ended, also when it made no run
RUNS_CSV = "runs.csv"  # in the sweep folder and the parent run: one row per model
SUMMARY_TABLE = "summary.json"  # the summary as an MLflow table on the parent run
BEST_TAG = "best_config"

# Under `uv run`, Ray would ship each job a copy of the project without its git-ignored,
# DVC-tracked data. Jobs use the project folder and environment that the nodes share instead.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


def plain(cfg: DictConfig) -> dict[str, Any]:
    """The job's config without Hydra's own node, as plain data."""
    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("hydra", None)
    return data


def check_data_settings(config: Config, root: Path) -> None:
    """The sweep trains on the data `dvc repro` prepared; its data settings cannot vary."""
    if config.data != load_params(root / PARAMS_FILE).data:
        raise ConfigError(
            "data.* cannot be overridden in a sweep: the jobs share the data prepared from "
            "params.yaml. Change conf/data/ and run `uv run python -m pipeline.config` instead."
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
            finished()
            self._close(exc)
            jobs = job_outcomes(Path(config.hydra.sweep.dir))
            stop(f"{failed}: {_reason(exc)}{failures(jobs)[1]}")

    def _start(self, config: DictConfig) -> None:
        from pipeline import provenance, tracking

        root = project_root()
        sweep_dir = Path(config.hydra.sweep.dir)
        earlier = sweep_dir / PARENT_FILE
        if earlier.exists() and not search.is_search(config.hydra.sweeper):
            raise ConfigError(
                f"hydra.sweep.dir {sweep_dir} already holds a sweep ({earlier}); only a search "
                "(+search=optuna) continues in its folder. Leave hydra.sweep.dir out to start a "
                "new one."
            )
        command = [sys.executable, "-m", "dvc", "repro", "preprocess"]
        preprocess = subprocess.Popen(command, cwd=root)
        try:
            if in_process(config.hydra.launcher):
                load_keras()  # the jobs run in this process: import TensorFlow meanwhile
        finally:
            if preprocess.wait() != 0:
                raise subprocess.CalledProcessError(preprocess.returncode, preprocess.args)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        t = config.tracking
        experiment_id = tracking.setup(t.experiment_name, t.uri, t.registered_model)
        # A resumed search goes on under its parent run.
        resumed = json.loads(earlier.read_text(encoding="utf-8")) if earlier.exists() else {}
        parent_id = tracking.open_run(
            experiment_id,
            f"sweep-{sweep_dir.parent.name}-{sweep_dir.name}",
            {
                tracking.SWEEP_TAG: tracking.SWEEP_PARENT,
                tracking.OVERRIDES_TAG: " ".join(config.hydra.overrides.task),
                **provenance.git_state(root),
            },
            run_id=resumed.get("run_id"),
        )
        # Jobs log where the parent does, wherever a launcher runs them.
        info = {
            "workspace": str(root),
            "run_id": parent_id,
            "experiment_id": experiment_id,
            "tracking_uri": tracking.tracking_uri(config.tracking.uri),
        }
        (sweep_dir / PARENT_FILE).write_text(json.dumps(info), encoding="utf-8")
        self.parent_id: str | None = parent_id
        # If the sweep itself dies, the parent must not stay RUNNING.
        atexit.register(self._close, RuntimeError("the sweep ended before its summary"))

    def _close(self, error: BaseException | None = None) -> None:
        from pipeline import tracking

        parent_id, self.parent_id = getattr(self, "parent_id", None), None
        if parent_id is None:
            return
        try:
            tracking.check_store()
            tracking.close_run(parent_id, error)
        except Exception as exc:  # the store is gone: say how to close it later
            print(
                f"sweep: could not close the parent run {parent_id} ({_reason(exc)}); "
                "`uv run python -m pipeline.runs --cleanup` closes it once the store answers.",
                file=sys.stderr,
            )

    def _end(self, config: DictConfig) -> None:
        from pipeline import tracking
        from pipeline.compare import (
            METHOD,
            SUMMARY_COLUMNS,
            format_summary,
            leaderboard,
            summarise,
            write_csv,
        )

        finished()  # the last jobs' models, evaluated in the background
        tracking.check_store()
        sweep_dir = Path(config.hydra.sweep.dir)
        parent = json.loads((sweep_dir / PARENT_FILE).read_text(encoding="utf-8"))
        parent_id = parent["run_id"]
        runs = leaderboard(parent["experiment_id"], parent_id)
        table = summarise(runs)
        write_csv(runs, sweep_dir / RUNS_CSV)
        write_csv(table, sweep_dir / tracking.SUMMARY_ARTIFACT, SUMMARY_COLUMNS)
        for name in (RUNS_CSV, tracking.SUMMARY_ARTIFACT):
            tracking.log_artifact(parent_id, sweep_dir / name)
        if table:
            columns = {c: [_plain(r[c]) for r in table] for c in SUMMARY_COLUMNS}
            tracking.log_table(parent_id, columns, SUMMARY_TABLE)
            best = table[0]
            means = {f"best_{k}": v for k, v in best.items() if k.endswith("_mean")}
            tracking.log_metrics(parent_id, means)
            tracking.set_tags(parent_id, {BEST_TAG: best["config"]})
        figures = sweep_figures(table, heatmap=not search.is_search(config.hydra.sweeper))
        if search.is_search(config.hydra.sweeper):
            figures |= log_search(config, parent_id, sweep_dir)
        for name, fig in figures.items():
            fig.savefig(sweep_dir / name, dpi=100)
            tracking.log_artifact(parent_id, sweep_dir / name, tracking.FIGURES_ARTIFACT)
        jobs = job_outcomes(sweep_dir)
        failed, reasons = failures(jobs)
        counts = {"jobs": len(jobs), "failed_jobs": len(failed), "models": len(runs)}
        tracking.log_metrics(parent_id, counts)
        print(f"\nSweep {parent_id}: {len(runs)} runs, {len(table)} configurations, best first\n")
        print(format_summary(table))
        print(f"\n{METHOD}")
        if table:
            print(register_best(config, table[0], parent_id))
        print(
            f"\nsummary: {sweep_dir / tracking.SUMMARY_ARTIFACT} (one row per model: {RUNS_CSV})"
        )
        if failed:
            self._close(PipelineError(f"{len(failed)} of {len(jobs)} jobs failed"))
            print(reasons, file=sys.stderr)
            sys.exit(1)
        self._close()


def in_process(launcher: DictConfig) -> bool:
    """Whether `launcher` (the `hydra.launcher` node) runs the jobs in the sweep's process."""
    return str(launcher._target_).endswith("BasicLauncher")


def job_outcomes(sweep_dir: Path) -> list[dict[str, Any]]:
    """How each job of the sweep in `sweep_dir` ended so far: its job.json."""
    return [json.loads(p.read_text()) for p in sorted(sweep_dir.glob(f"*/{JOB_FILE}"))]


def failures(jobs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """The failed ones of `jobs` (`job_outcomes`), and a text naming each ('' if none)."""
    failed = [j for j in jobs if j["status"] != "FINISHED"]
    if not failed:
        return [], ""
    lines = [f"  job {j['job']} ({j['overrides']}): {j['error']}" for j in failed]
    return failed, f"\n{len(failed)} of {len(jobs)} jobs failed:\n" + "\n".join(lines)


def _reason(exc: BaseException) -> str:
    """What went wrong, in a line: a server that stopped answering is named as such."""
    if isinstance(exc, PipelineError):
        return str(exc)
    text = str(exc)
    if "Max retries exceeded" in text:
        request = re.search(r"API request to (\S+) failed", text)
        cause = "connection refused" if "Connection refused" in text else "no answer"
        return (
            f"the MLflow tracking server stopped answering ({cause} at "
            f"{request.group(1) if request else 'the server'}, after "
            f"{os.environ.get('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '?')} retries); a run it left "
            "RUNNING is closed by `uv run python -m pipeline.runs --cleanup` once it answers"
        )
    return f"{type(exc).__name__}: {exc}"


def stop(message: str) -> None:
    """End the sweep with `message` and exit status 1."""
    print(f"sweep: {message}", file=sys.stderr)
    sys.exit(1)


def _plain(value: Any) -> Any:
    """A table cell MLflow can store as JSON: NaN becomes None."""
    return None if isinstance(value, float) and math.isnan(value) else value


def register_best(config: DictConfig, best: dict[str, Any], parent_id: str) -> str:
    """Register the best configuration's model, once per sweep: of its seeds, the one with the
    median validation accuracy. It becomes champion only if it beats the current one."""
    from pipeline import tracking

    members = sorted(best["members"], key=lambda r: r["val_accuracy"])
    chosen = members[(len(members) - 1) // 2]
    run = tracking.get_run(chosen["run_id"], "it was a run of this sweep.")
    name = config.tracking.registered_model
    version, promoted = tracking.register(
        chosen["run_id"], run.data.tags[tracking.MODEL_URI_TAG], name, chosen["val_accuracy"]
    )
    outcome = {tracking.REGISTERED_TAG: f"{name}/{version}", tracking.CHAMPION_TAG: promoted}
    tracking.set_tags(parent_id, {k: str(v).lower() for k, v in outcome.items()})
    return (
        f"\nregistered {chosen['run_name']} (the best configuration's median seed by "
        f"val_accuracy, {chosen['val_accuracy']:.4f}, of {len(members)}) as {name} version "
        f"{version}" + (" (new champion)" if promoted else " (the champion stays)")
    )


def log_search(config: DictConfig, parent_id: str, sweep_dir: Path) -> dict[str, Any]:
    """Keep a search's study in its parent run: the study database, a row per trial, the best
    trial's parameters as tags and its objective as `best_value`; return its history figure."""
    from pipeline import plots, tracking
    from pipeline.compare import write_csv

    trials, best = search.study_summary(config)
    columns = list(dict.fromkeys(k for t in trials for k in t))
    write_csv(trials, sweep_dir / search.TRIALS_CSV, columns)
    for name in (search.TRIALS_CSV, search.RESULTS_FILE, search.STUDY_FILE):
        if (sweep_dir / name).exists():
            tracking.log_artifact(parent_id, sweep_dir / name, search.STUDY_ARTIFACT)
    if best:
        tags = {f"{search.BEST_PREFIX}{k}": v for k, v in best["params"].items()}
        tracking.set_tags(parent_id, tags | {f"{search.BEST_PREFIX}trial": best["trial"]})
        tracking.log_metrics(parent_id, {"best_value": best["value"], "trials": len(trials)})
        print(
            f"\nbest trial {best['trial']} of {len(trials)}: {best['params']}, "
            f"validation accuracy {best['value']:.4f} (the mean over its seeds)"
        )
    values = [t["val_accuracy_mean"] for t in trials]
    return {"search_history.png": plots.search_history(values)}


def sweep_figures(table: list[dict[str, Any]], heatmap: bool = True) -> dict[str, Any]:
    """The sweep's figures from its summary: validation accuracy, the mean over seeds with its
    95% interval (no bars with one seed); the hidden units x epochs heatmap for a grid."""
    from pipeline import plots

    if not table:
        return {}
    hidden = [int(r["hidden_units"]) for r in table]
    epochs = [int(r["epochs"]) for r in table]
    mean = [r["val_accuracy_mean"] for r in table]
    ci = [r["val_accuracy_ci95"] for r in table]
    several_models = len({r["model"] for r in table}) > 1
    groups = [
        f"{r['model']} e{r['epochs']}" if several_models else f"e{r['epochs']}" for r in table
    ]
    labels = [f"h{h}-e{e}" for h, e in zip(hidden, epochs, strict=True)]
    figures = {
        "accuracy_by_hidden_units.png": plots.sweep_lines(hidden, mean, groups, ci),
        "accuracy_vs_seconds.png": plots.accuracy_vs_seconds(
            [r["train_seconds_mean"] for r in table], mean, labels, ci
        ),
    }
    if heatmap:
        figures["accuracy_heatmap.png"] = plots.sweep_heatmap(hidden, epochs, mean, ci)
    return figures


def run_job(cfg: DictConfig) -> float | None:
    """One configuration, `sweep.seeds` times, through the same core as `dvc repro`: a child run
    of the sweep per seed. Returns the mean validation accuracy over the seeds (an optimiser's
    objective), never a test score.

    A bad value is rejected before any run is made, as in a stage; a failure during training
    leaves that run FAILED with its reason and ends the job. Either way the job records it in
    its folder's job.json for the summary, and the sweep goes on. Each model is evaluated in the
    background (`Finishing`); a job run by the sweep's own process leaves its last one to the
    sweep's end, other jobs (another launcher's, a search's trials) wait for theirs.
    """
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    overrides = " ".join(hc.overrides.task)
    outcome: dict[str, Any] = {"job": hc.job.num, "overrides": overrides, "status": "FAILED"}
    sweep_process = in_process(hc.launcher)  # then it leaves its last model to the sweep's end
    background = finishing(low_priority=sweep_process)
    models: list[Future] = []
    objective = None
    try:
        parent = json.loads((Path(hc.sweep.dir) / PARENT_FILE).read_text(encoding="utf-8"))
        data = plain(cfg)
        config = validate(data)
        check_data_settings(config, Path(parent["workspace"]))
        seeds = range(config.seed, config.seed + config.sweep.seeds)
        load_keras()  # quietly: jobs a launcher runs elsewhere start here
        from pipeline import tracking

        experiment_id = tracking.setup(config.tracking.experiment_name, parent["tracking_uri"])
        scores = []
        for seed in seeds:
            score, model = _train_model(
                {**data, "seed": seed}, overrides, parent, experiment_id, out, background
            )
            scores.append(score)
            models.append(model)
        outcome |= {"status": "FINISHED", "val_accuracy": scores}
        objective = sum(scores) / len(scores)
    except Exception as exc:  # the summary reports it; the other jobs go on
        outcome["error"] = _reason(exc)
    finally:
        ended = background.then(functools.partial(_record, outcome, models, out))
    if sweep_process and not search.is_search(hc.sweeper):
        return objective
    return objective if ended.result()["status"] == "FINISHED" else None


def _record(outcome: dict[str, Any], models: list[Future], out: Path) -> dict[str, Any]:
    """Write the job's job.json once its models are done: one that failed fails the job."""
    failed = next((f.exception() for f in models if f.exception() is not None), None)
    if failed is not None and outcome["status"] == "FINISHED":
        outcome = {**outcome, "status": "FAILED", "error": _reason(failed)}
    if outcome["status"] != "FINISHED":
        outcome.setdefault("error", "interrupted")
        print(
            f"job {outcome['job']} ({outcome['overrides']}) failed: {outcome['error']}",
            file=sys.stderr,
        )
    (out / JOB_FILE).write_text(json.dumps(outcome), encoding="utf-8")
    return outcome


def _train_model(
    data: dict[str, Any],
    overrides: str,
    parent: dict[str, str],
    experiment_id: str,
    out: Path,
    background: Finishing,
) -> tuple[float, Future]:
    """One model of the job: its own run, files under `out/s<seed>/`. Trains it and predicts
    the test set; the rest of its run (logging, saving, evaluation) is queued for `background`.
    Returns its validation accuracy and the queued work."""
    from pipeline import experiment, tracking
    from pipeline.data import prepared, project_data_digests
    from pipeline.model import limit, predict, prepared_tensors

    config = validate(data)
    root = Path(parent["workspace"])
    folder = out / f"s{config.seed}"
    test = prepared(root, "test")
    deferred = experiment.Deferred()
    # Seeds and epoch counts of one model train it with the same compiled steps: the jobs of a
    # process share them (`model.compiled_model`).
    with tracking.model_run(
        root,
        to_yaml(data),
        project_data_digests(root),
        experiment_id,
        experiment.run_name(config, with_seed=True),
        tags={tracking.OVERRIDES_TAG: overrides},
        parent_run_id=parent["run_id"],
        close=False,  # `background` closes it
    ) as run_id:
        experiment.start(config)  # fixes TensorFlow's threads: before its first tensor
        try:
            trained = experiment.train(
                config,
                limit(prepared_tensors(root, "train"), config.train.max_examples),
                prepared_tensors(root, "val"),
                run_id,
                folder,
                deferred,
            )
            probs = predict(trained.model, test[0])
        except BaseException:
            with contextlib.suppress(Exception):  # the run, closed now, keeps what it got
                deferred.replay()
            raise

        def finish() -> None:
            deferred.replay()
            experiment.evaluate(
                config,
                probs,
                trained.model_uri,
                trained.history,
                test,
                run_id,
                folder,
                register=False,  # the sweep registers its best configuration once, at the end
            )

        future = background.model(run_id, finish)
    return trained.history[tracking.VAL_ACCURACY][-1], future


def sampler_seed(seed: int, sweep_dir: str) -> int:
    """A search's sampler seed (conf/search/optuna.yaml): `seed`, plus the jobs the sweep folder
    already holds. A resumed study's sampler then draws new trials, not its first ones again."""
    return seed + len(job_outcomes(Path(sweep_dir)))


OmegaConf.register_new_resolver("sampler_seed", sampler_seed, replace=True)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    return run_job(cfg)


if __name__ == "__main__":
    quiet()
    # The Optuna sweeper builds its search space from distributions Optuna 3 deprecated.
    warnings.filterwarnings("ignore", ".*Distribution has been deprecated", FutureWarning)
    main()  # a sweep that failed has exited by now, through Hydra or `stop`
    if ran_jobs():  # no launcher's workers to shut down, every run closed
        exit_now()
