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
from dataclasses import dataclass, replace
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
from pipeline.sweeps.plan import own_overrides
from pipeline.sweeps.resuming import job_checkpoints
from pipeline.sweeps.stats import median_seed

if TYPE_CHECKING:
    from pipeline.core.training import Trainer  # TensorFlow: imported once a job trains

LIVE_EPOCHS_S = 2.0  # a model in training shows its epochs in MLflow at most this late


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
            context = ray.get_runtime_context()
            tags[names.RAY_NODE_TAG] = context.get_node_id()
            if (task := context.get_task_id()) is not None:
                tags[names.RAY_TASK_TAG] = task
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
    outcome: dict[str, Any] = {
        "job": hc.job.num,
        "overrides": own_overrides(overrides),
        "status": "FAILED",
    }
    began = time.time()
    outcome["seconds"] = seconds = {"started": round(began, 3)}  # where a job's time goes
    sweep_process = in_process(hc.launcher)  # then it leaves its last model to the sweep's end
    background = evaluator(low_priority=sweep_process)
    models: list[Future] = []
    # Per epoch count (the job's own, and its checkpoints'): each seed's validation accuracy,
    # run and figures folder.
    trained: dict[int, list[tuple[float, str, Path]]] = {}
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
        also = list(config.sweep.also_epochs or [])  # the plan's checkpoints (plan.py)
        shipped = bool(parent.get("shipped"))
        scores, trainings = [], []
        for seed in range(config.seed, config.seed + config.sweep.seeds):
            where = experiment.Destination(
                root,
                out / f"s{seed}",
                experiment_id,
                parent_run_id=parent["run_id"],
                tags={names.OVERRIDES_TAG: own_overrides(overrides), **cluster_tags()},
                entry_point="pipeline/sweep.py",
                data_digests=parent.get("digests") if shipped else None,
                code_state=parent.get("git") if shipped else None,
            )
            made = _train_models(
                config.model_copy(update={"seed": seed}),
                where,
                background,
                config.sweep.seeds == 1,
                also,
                models,
            )
            scores.append(made[0].score)
            trainings.append(made[0].seconds)
            for one in made:
                trained.setdefault(one.epochs, []).append((one.score, one.run_id, one.figures))
        outcome |= {"status": "FINISHED", "val_accuracy": scores}
        seconds["training"] = round(sum(trainings), 3)
        objective = sum(scores) / len(scores)
    except Exception as exc:  # the summary reports it; the other jobs go on
        outcome["error"] = reason(exc)
    finally:
        for seeds in trained.values():  # each configuration's median seed's figures
            if len(seeds) > 1:
                _, run_id, folder = median_seed(seeds, key=lambda t: t[0])
                draw = functools.partial(_draw_figures, run_id, folder, background)
                background.queue_after(draw)
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


@dataclass(frozen=True)
class Made:
    """One model a job made: its epoch count, validation accuracy, run, figures folder and
    training seconds."""

    epochs: int
    score: float
    run_id: str
    figures: Path
    seconds: float


def _train_models(
    config: Config,
    where: Any,
    background: BackgroundEvaluator,
    figures: bool,
    also: list[int],
    models: list[Future],
) -> list[Made]:
    """One training of the job's configuration, in its own run, and the models of the epoch
    counts `also` taken from it (`EpochSnapshots`), each in a run of its own: the run a
    training of that many epochs alone would make, tagged with the run that trained it.

    Each model is trained here, its epochs logged as they end (`LIVE_EPOCHS_S`), then the rest
    of its run is queued for `background` (its work futures are added to `models`): logging
    its inputs, its last epochs and its model (from its detached state, so that the next seed
    trains meanwhile), scoring the test set, its evaluation, closing it. With `figures` (a job
    of one seed) its figures are drawn in its evaluation; else only their data is kept, and the
    job draws its median seed's at its end. A training that fails at epoch j still makes the
    models of the counts below j; the others' runs fail with its reason. On a launcher that
    runs a lost job again, the training keeps its checkpoints in its run and resumes a lost
    attempt's (resuming.py)."""
    from pipeline.core import training
    from pipeline.tracking import experiment, runs

    snapshots = training.EpochSnapshots(also)
    with experiment.model_run(own_config(config), where, close=False) as run_id:
        splits = experiment.training_splits(config, where.root)
        logger = experiment.epoch_logger(run_id, every=LIVE_EPOCHS_S)
        checkpoints = job_checkpoints(config, where.root, where.out, run_id, where.tags, also)
        background.training_starts()
        try:
            callbacks = [logger, snapshots]
            trained = experiment.train(config, splits, trainer(), callbacks, checkpoints)
        except BaseException as exc:
            with contextlib.suppress(Exception):  # the run, closed now, keeps what it got
                experiment.log_inputs(run_id, own_config(config), splits)
                runs.log_epochs(run_id, logger.rest())
            if also and snapshots.model is not None:
                kept = trainer().detach(snapshots.model, config.model, config.train)
                _checkpoints(config, where, background, figures, run_id, snapshots, kept,
                             _epochs(logger, checkpoints), splits, models, exc)  # fmt: skip
            raise
        if checkpoints is not None:
            if checkpoints.resumed is not None:
                experiment.resumed_into(run_id, checkpoints.resumed, trained.history)
            checkpoints.clear()
        experiment.write_reports(trained, where.out)
        kept = trainer().detach(trained.model, config.model, config.train)
        models.append(
            _finish_later(
                background,
                own_config(config),
                where,
                run_id,
                kept,
                logger.rest,
                trained,
                splits,
                figures,
            )  # fmt: skip
        )
    made = [Made(config.train.epochs, trained.history[names.VAL_ACCURACY][-1], run_id,
                 where.out / FIGURES_DIR, trained.described[names.TRAIN_SECONDS])]  # fmt: skip
    made += _checkpoints(config, where, background, figures, run_id, snapshots, kept,
                         _epochs(logger, checkpoints), splits, models)  # fmt: skip
    return made


def _epochs(logger: Any, checkpoints: Any) -> list:
    """Every epoch of a training (rows of `runs.log_epochs`): a resumed one's from before too."""
    from pipeline.tracking import experiment

    resumed = checkpoints.resumed if checkpoints is not None else None
    if resumed is None:
        return logger.held
    return [*experiment.resumed_rows(resumed, resumed.history), *logger.held]


def own_config(config: Config, epochs: int | None = None) -> Config:
    """`config` as a model of it records it: without the plan's `sweep.also_epochs`, and with
    `epochs` for a checkpoint's."""
    sweep = config.sweep.model_copy(update={"also_epochs": None})
    train = config.train.model_copy(update={"epochs": epochs or config.train.epochs})
    return config.model_copy(update={"sweep": sweep, "train": train})


def _finish_later(
    background: BackgroundEvaluator,
    config: Config,
    where: Any,
    run_id: str,
    kept: Any,
    epochs: Callable[[], list],
    trained: Any,
    splits: tuple,
    figures: bool,
) -> Future:
    """Queue the rest of a trained model's run for `background`: its inputs, model, the epochs
    not logged yet (`epochs()`), test scores and evaluation; return the work's future."""
    from pipeline.core import model, training
    from pipeline.core.data import prepared
    from pipeline.tracking import experiment, runs

    def finish(turn: Callable[[], None]) -> None:
        """In the background, taking `turn`s with training between its calls."""
        experiment.log_inputs(run_id, config, splits)
        turn()
        example = training.head(splits[1], experiment.EXAMPLE_INPUTS)
        uri = experiment.log_model(kept, run_id, where.out, example, trained.described)
        turn()
        runs.log_epochs(run_id, epochs())
        turn()
        probs = model.predict(kept.model(), prepared(where.root, "test"))
        draw = background.draw if figures else None
        experiment.evaluate_model(config, where, run_id, probs, uri, trained.history, draw)

    return background.model(run_id, finish)


def _checkpoints(
    config: Config,
    where: Any,
    background: BackgroundEvaluator,
    figures: bool,
    trained_in: str,
    snapshots: Any,
    kept: Any,
    held: list,
    splits: tuple,
    models: list[Future],
    failure: BaseException | None = None,
) -> list[Made]:
    """The models of the checkpoints `snapshots` took of the training in run `trained_in`,
    each in its own run (its own config, name, k epochs of metrics, model, scores, figures).
    After the training's `failure`, a count it did not reach gets a FAILED run saying so; after
    an interrupt (Ctrl-C, SIGTERM), none: the sweep is stopping."""
    from pipeline.core import training
    from pipeline.tracking import experiment

    made = []
    stopping = isinstance(failure, KeyboardInterrupt)
    for k in sorted(snapshots.epochs):
        if stopping and k not in snapshots.taken:
            continue
        cfg = own_config(config, k)
        overrides = own_overrides(where.tags[names.OVERRIDES_TAG], k)
        here = replace(
            where,
            out=where.out.parent / f"e{k}" / where.out.name,
            tags={**where.tags, names.OVERRIDES_TAG: overrides, names.TRAINED_IN_TAG: trained_in},
        )
        try:
            with experiment.model_run(cfg, here, close=False) as run_id:
                if k not in snapshots.taken:
                    with contextlib.suppress(Exception):  # its config, for the runs table
                        experiment.log_inputs(run_id, cfg, splits)
                    raise PipelineError(
                        f"its training (run {trained_in}) stopped before epoch {k}: "
                        f"{reason(failure) if failure else 'no model of that epoch'}"
                    )
                rows = held[:k]
                keys = (*training.HISTORY_KEYS, training.EPOCH_SECONDS)
                history = {key: [logs[key] for _, _, logs in rows] for key in keys}
                net = snapshots.model
                described = {
                    names.TRAIN_SECONDS: round(sum(history[training.EPOCH_SECONDS]), 3),
                    "train_examples": training.shape_of(splits[0])[0],
                    "model_params": int(net.count_params()),
                    "model_layers": len(net.layers),
                }
                model_k = experiment.Trained(None, history, described)
                experiment.write_reports(model_k, here.out)
                models.append(
                    _finish_later(
                        background,
                        cfg,
                        here,
                        run_id,
                        kept.with_arrays(snapshots.taken[k]),
                        functools.partial(list, rows),
                        model_k,
                        splits,
                        figures,
                    )  # fmt: skip
                )
        except PipelineError:
            continue  # its run ended FAILED, with the reason
        made.append(Made(k, history[names.VAL_ACCURACY][-1], run_id, here.out / FIGURES_DIR,
                         described[names.TRAIN_SECONDS]))  # fmt: skip
    return made


def sampler_seed(seed: int, sweep_dir: str) -> int:
    """A search's sampler seed (conf/search/optuna.yaml): `seed`, plus the jobs the sweep folder
    already holds. A resumed study's sampler then draws new trials, not its first ones again."""
    return seed + len(job_outcomes(Path(sweep_dir)))


OmegaConf.register_new_resolver("sampler_seed", sampler_seed, replace=True)
