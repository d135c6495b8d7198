"""A sweep job: one configuration's overrides in, its models' runs and its outcome out.

Hydra calls `run_job` once per combination (a grid's or a search's trial). It validates the
config once, then trains `sweep.seeds` models of it through the same core as `dvc repro`
(`experiment.model_run`, `train`, `evaluate_model`), each a child run of the sweep's parent, and
hands the rest of each model's run to the background (`finishing`). How the job ended goes to
its folder's job.json, which the sweep's summary reads (`job_outcomes`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from pipeline.core import names
from pipeline.core.config import Config, ConfigError, load_params, validate
from pipeline.core.console import load_keras
from pipeline.core.data import write_json
from pipeline.core.errors import PipelineError
from pipeline.core.paths import FIGURES_DIR, PARAMS_FILE
from pipeline.sweeps import search
from pipeline.sweeps.finishing import BackgroundEvaluator, evaluator
from pipeline.sweeps.stats import median_seed

if TYPE_CHECKING:
    from pipeline.core.training import Trainer  # TensorFlow: imported once a job trains


def plain(cfg: DictConfig) -> dict[str, Any]:
    """The config without Hydra's own node, resolved, as plain data: a job's, or the sweep's
    (whose Hydra node holds values only a job has)."""
    data = OmegaConf.to_container(cfg, resolve=False)
    data.pop("hydra", None)
    return OmegaConf.to_container(OmegaConf.create(data), resolve=True)


def check_data_settings(config: Config, root: Path) -> None:
    """The sweep trains on the data `dvc repro` prepared; its data settings cannot vary."""
    if config.data != _project_params(root).data:
        raise ConfigError(
            "data.* cannot be overridden in a sweep: the jobs share the data prepared from "
            "params.yaml. Change conf/data/ and run `uv run python -m pipeline.config` instead."
        )


@functools.cache
def _project_params(root: Path) -> Config:
    return load_params(root / PARAMS_FILE)


def load_training_data(config: DictConfig, root: Path) -> None:
    """Before the jobs of the sweep's own process: the training and validation data, loaded
    once as tensors (`experiment.training_splits` keeps them), so that the first job starts
    fitting at once. A config that is not valid loads nothing: each job says what is wrong."""
    from pipeline.tracking import experiment

    try:
        settings = validate(plain(config))
    except ConfigError:
        return
    experiment.training_splits(settings, root)


def in_process(launcher: DictConfig) -> bool:
    """Whether `launcher` (the `hydra.launcher` node) runs the jobs in the sweep's process."""
    return str(launcher._target_).endswith("BasicLauncher")


def job_outcomes(sweep_dir: Path) -> list[dict[str, Any]]:
    """How each job of the sweep in `sweep_dir` ended so far: its job.json."""
    return [json.loads(p.read_text()) for p in sorted(sweep_dir.glob(f"*/{names.JOB_FILE}"))]


def failures(jobs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """The failed ones of `jobs` (`job_outcomes`), and a text naming each ('' if none)."""
    failed = [j for j in jobs if j["status"] != "FINISHED"]
    if not failed:
        return [], ""
    lines = [f"  job {j['job']} ({j['overrides']}): {j['error']}" for j in failed]
    return failed, f"\n{len(failed)} of {len(jobs)} jobs failed:\n" + "\n".join(lines)


def reason(exc: BaseException) -> str:
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


def cluster_tags() -> dict[str, str]:
    """Where on a cluster the job runs: its Ray node, its SLURM job (none elsewhere)."""
    tags = {}
    if "ray" in sys.modules:  # a Ray task's process has it loaded; nothing else imports it
        import ray

        if ray.is_initialized():
            tags[names.RAY_NODE_TAG] = ray.get_runtime_context().get_node_id()
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        tags[names.SLURM_JOB_TAG] = f"{array}_{task}"  # as squeue and scancel name it
    elif os.environ.get("SLURM_JOB_ID"):
        tags[names.SLURM_JOB_TAG] = os.environ["SLURM_JOB_ID"]
    return tags


def sweep_parent(sweep_dir: Path) -> dict[str, Any]:
    """The sweep's parent run and what a job needs of it: from the task's environment for a job
    shipped to another machine (pipeline/sweeps/shipping.py), else the sweep folder's
    parent_run.json."""
    from pipeline.sweeps.shipping import shipped_parent

    return shipped_parent() or json.loads(
        (sweep_dir / names.PARENT_FILE).read_text(encoding="utf-8")
    )


def job_workspace(parent: dict[str, Any]) -> Path:
    """Where the job's code and data are: the sweep's project folder, or for a shipped job
    this task's working directory (its copy of the code), the prepared data pulled into it
    from the DVC remote and checked against the sweep's digests."""
    if not parent.get("shipped"):
        return Path(parent["workspace"])
    from pipeline.sweeps.shipping import pull_prepared

    root = Path.cwd()
    if not (root / PARAMS_FILE).is_file():
        raise PipelineError(
            f"this job's working directory {root} holds no copy of the project ({PARAMS_FILE} "
            "is missing): the launcher must ship it (ray.init.runtime_env.working_dir)."
        )
    pull_prepared(root, parent["remote"], parent["digests"])
    return root


def run_job(cfg: DictConfig) -> float | None:
    """One configuration, `sweep.seeds` times, through the same core as `dvc repro`: a child run
    of the sweep per seed. Returns the mean validation accuracy over the seeds (an optimiser's
    objective), never a test score.

    A bad value is rejected before any run is made, as in a stage; a failure during training
    leaves that run FAILED with its reason and ends the job. Either way the job records it in
    its folder's job.json for the summary, and the sweep goes on. Each model is evaluated in the
    background (`BackgroundEvaluator`); a job run by the sweep's own process leaves its last one
    to the sweep's end, other jobs (another launcher's, a search's trials) wait for theirs.
    """
    from pipeline.tracking import experiment

    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    overrides = " ".join(hc.overrides.task)
    outcome: dict[str, Any] = {"job": hc.job.num, "overrides": overrides, "status": "FAILED"}
    began = time.time()
    outcome["seconds"] = seconds = {"started": round(began, 3)}  # where a job's time goes
    sweep_process = in_process(hc.launcher)  # then it leaves its last model to the sweep's end
    background = evaluator(low_priority=sweep_process)
    models: list[Future] = []
    trained: list[tuple[float, str, Path]] = []  # each model's validation accuracy, run, figures
    objective = None
    try:
        parent = sweep_parent(Path(hc.sweep.dir))
        config = validate(plain(cfg))  # once: each seed is a copy with its own seed
        root = job_workspace(parent)
        seconds["data"] = round(time.time() - began, 3)  # a shipped job's pull, and its check
        check_data_settings(config, root)
        load_keras()  # quietly: jobs a launcher runs elsewhere start here
        from pipeline.tracking import store

        t = config.tracking
        experiment_id = store.setup(
            t.experiment_name, parent["tracking_uri"], wait_s=t.server_wait_s, patient=True
        )
        seconds["setup"] = round(time.time() - began - seconds["data"], 3)  # imports, store
        scores, trainings = [], []
        for seed in range(config.seed, config.seed + config.sweep.seeds):
            where = experiment.Destination(
                root,
                out / f"s{seed}",
                experiment_id,
                parent_run_id=parent["run_id"],
                tags={names.OVERRIDES_TAG: overrides, **cluster_tags()},
                entry_point="pipeline/sweep.py",
                data_digests=parent.get("digests") if parent.get("shipped") else None,
                code_state=parent.get("git") if parent.get("shipped") else None,
            )
            score, run_id, model, took = _train_model(
                config.model_copy(update={"seed": seed}),
                where,
                background,
                config.sweep.seeds == 1,
            )
            scores.append(score)
            trainings.append(took)
            models.append(model)
            trained.append((score, run_id, where.out / FIGURES_DIR))
        outcome |= {"status": "FINISHED", "val_accuracy": scores}
        seconds["training"] = round(sum(trainings), 3)
        objective = sum(scores) / len(scores)
    except Exception as exc:  # the summary reports it; the other jobs go on
        outcome["error"] = reason(exc)
    finally:
        if len(trained) > 1:  # the figures of the configuration's median seed, once evaluated
            _, run_id, folder = median_seed(trained, key=lambda t: t[0])
            background.queue_after(functools.partial(_draw_figures, run_id, folder, background))
        ended = background.queue_after(functools.partial(_record, outcome, models, out))
    if sweep_process and not search.is_search(hc.sweeper):
        return objective
    return objective if background.outcome(ended)["status"] == "FINISHED" else None


def _record(outcome: dict[str, Any], models: list[Future], out: Path) -> dict[str, Any]:
    """Write the job's job.json once its models are done: one that failed fails the job."""
    failed = next((f.exception() for f in models if f.exception() is not None), None)
    if failed is not None and outcome["status"] == "FINISHED":
        outcome = {**outcome, "status": "FAILED", "error": reason(failed)}
    if outcome["status"] != "FINISHED":
        outcome.setdefault("error", "interrupted")
        print(
            f"job {outcome['job']} ({outcome['overrides']}) failed: {outcome['error']}",
            file=sys.stderr,
        )
    if "seconds" in outcome:  # the rest of the job: logging, evaluation, waiting for them
        outcome["seconds"]["ended"] = round(time.time(), 3)
    write_json(out / names.JOB_FILE, outcome)
    return outcome


def _draw_figures(run_id: str, folder: Path, background: BackgroundEvaluator) -> None:
    """Draw and log the figures of a job's median seed, whose run is closed: one that cannot
    be drawn or stored is said, not failed (its run keeps what they are drawn from)."""
    from pipeline.tracking import experiment

    try:
        experiment.draw_figures(run_id, folder, background.draw)
    except Exception as exc:
        print(
            f"sweep: the figures of run {run_id} were not drawn ({reason(exc)}); "
            f"`uv run python -m pipeline.runs --figures {run_id}` draws them later.",
            file=sys.stderr,
        )


@functools.cache
def trainer() -> Trainer:
    """This process's `Trainer`: the seeds and epoch counts of one model, in one job or the next,
    train with the same compiled steps (core/training.py)."""
    from pipeline.core.training import Trainer

    return Trainer()


def _train_model(
    config: Config, where: Any, background: BackgroundEvaluator, figures: bool
) -> tuple[float, str, Future, float]:
    """One model of the job, in its own run: trains it here, then queues the rest of its run
    for `background`: logging its inputs, epochs and model (saved from its detached state, so
    that the next seed trains meanwhile), scoring the test set, its evaluation, closing it.
    With `figures` (a job of one seed) its figures are drawn in its evaluation; else only their
    data is kept, and the job draws its median seed's at its end.
    Returns its validation accuracy, its run, the queued work and its training seconds."""
    from pipeline.core import model, training
    from pipeline.core.data import prepared
    from pipeline.tracking import experiment, runs

    with experiment.model_run(config, where, close=False) as run_id:  # `background` closes it
        splits = experiment.training_splits(config, where.root)
        logger = experiment.epoch_logger(run_id, live=False)  # one call, after the model
        background.training_starts()
        try:
            trained = experiment.train(config, splits, trainer(), [logger])
        except BaseException:
            with contextlib.suppress(Exception):  # the run, closed now, keeps what it got
                experiment.log_inputs(run_id, config, splits)
                runs.log_epochs(run_id, logger.held)
            raise
        experiment.write_reports(trained, where.out)
        kept = trainer().detach(trained.model, config.model, config.train)

        def finish(turn: Callable[[], None]) -> None:
            """In the background, taking `turn`s with training between its calls."""
            experiment.log_inputs(run_id, config, splits)
            turn()
            example = training.head(splits[1], experiment.EXAMPLE_INPUTS)
            uri = experiment.log_model(kept, run_id, where.out, example, trained.described)
            turn()  # the epochs after the model: MLflow reads every metric's history of a run
            runs.log_epochs(run_id, logger.held)  # when it logs a model to it, per metric
            turn()
            probs = model.predict(kept.model(), prepared(where.root, "test"))
            draw = background.draw if figures else None
            experiment.evaluate_model(config, where, run_id, probs, uri, trained.history, draw)

        future = background.model(run_id, finish)
    took = trained.described[names.TRAIN_SECONDS]
    return trained.history[names.VAL_ACCURACY][-1], run_id, future, took


def sampler_seed(seed: int, sweep_dir: str) -> int:
    """A search's sampler seed (conf/search/optuna.yaml): `seed`, plus the jobs the sweep folder
    already holds. A resumed study's sampler then draws new trials, not its first ones again."""
    return seed + len(job_outcomes(Path(sweep_dir)))


OmegaConf.register_new_resolver("sampler_seed", sampler_seed, replace=True)
