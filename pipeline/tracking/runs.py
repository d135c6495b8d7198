"""MLflow runs: how one starts and ends, and logging to it by its id.

Runs are explicit: functions take a run id and log through `MlflowClient`, never to whatever
run happens to be active. SIGINT and SIGTERM end a run KILLED; an error ends it FAILED with the
reason in its `failure_reason` tag.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from mlflow.entities import Metric, Param, RunStatus, RunTag

from pipeline.core import names
from pipeline.core.data import write_json
from pipeline.core.errors import PipelineError, raise_interrupt
from pipeline.tracking import provenance


def process_tags() -> dict[str, str]:
    """Where the run's process lives, so that `pipeline.runs --cleanup` can tell it died."""
    return {names.HOST_TAG: platform.node(), names.PID_TAG: str(os.getpid())}


INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


def open_run(
    experiment_id: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    run_id: str | None = None,
    parent_run_id: str | None = None,
) -> str:
    """Create a run (or mark `run_id` RUNNING again), tagged with its process; return its id."""
    client = mlflow.MlflowClient()
    tags = {**(tags or {}), **process_tags()}
    if parent_run_id:
        tags[names.PARENT_TAG] = parent_run_id
    if run_id is None:
        experiment_id = experiment_id or mlflow.get_experiment_by_name("Default").experiment_id
        return client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
    set_tags(run_id, tags)
    return run_id


def close_run(run_id: str, error: BaseException | None = None) -> None:
    """End the run FINISHED, or KILLED for an interrupt, else FAILED with the reason in its
    `failure_reason` tag."""
    client = mlflow.MlflowClient()
    if error is None:
        client.set_terminated(run_id, "FINISHED")
        return
    client.set_tag(run_id, names.FAILURE_TAG, f"{type(error).__name__}: {error}"[:5000])
    client.set_terminated(run_id, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")


def close_orphans(experiment_id: str, parent_id: str, why: str) -> list[str]:
    """End KILLED, with `why` as the reason, the child runs of `parent_id` still RUNNING once
    every job of the sweep is done: their process died without closing them (a node lost, a
    job cancelled). Returns their names."""
    client = mlflow.MlflowClient()
    left = client.search_runs(
        [experiment_id],
        f"tags.`{names.PARENT_TAG}` = '{parent_id}' and attributes.status = 'RUNNING'",
    )
    for run in left:
        client.set_tag(run.info.run_id, names.FAILURE_TAG, why)
        client.set_terminated(run.info.run_id, "KILLED")
    return [run.info.run_name for run in left]


@contextmanager
def tracked_run(
    experiment_id: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    run_id: str | None = None,
    parent_run_id: str | None = None,
    close: bool = True,
) -> Iterator[str]:
    """`open_run` ... `close_run` around a block; SIGINT and SIGTERM end it KILLED, the signal
    named in its `failure_reason`. Yields the run id. With `close=False`, a block that ends
    without error leaves the run open, for the caller to close (`close_run`).
    """
    previous = {sig: signal.signal(sig, raise_interrupt) for sig in INTERRUPTS}
    try:
        run_id = open_run(experiment_id, run_name, tags, run_id, parent_run_id)
        try:
            yield run_id
        except BaseException as exc:
            close_run(run_id, exc)
            raise
        if close:
            close_run(run_id)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def model_run(
    code_dir: Path,
    config_text: str,
    data_digests: Mapping[str, str],
    experiment_id: str,
    run_name: str,
    *,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
    close: bool = True,
    entry_point: str = "pipeline/train.py",
    code_state: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """A `tracked_run` for one trained model, with its provenance logged before any work.

    Tags from `provenance.provenance` (`entry_point` is the command that made it, MLflow's
    Source; `code_state`, the git state of shipped code); artifacts: the resolved config
    (`config.yaml`) and, when the tree is dirty, the uncommitted diff (`uncommitted.diff`,
    dvc.lock aside; a shipped job's is its sweep's parent run's).
    """
    made_of = provenance.provenance(code_dir, data_digests, config_text, entry_point, code_state)
    tags = {**made_of, **(tags or {})}
    with tracked_run(experiment_id, run_name, tags, None, parent_run_id, close) as run_id:
        log_text(run_id, config_text, names.CONFIG_ARTIFACT)
        if tags.get(names.GIT_DIRTY) == "true" and code_state is None:
            log_text(run_id, provenance.uncommitted_diff(code_dir), names.DIFF_ARTIFACT)
        yield run_id


# ---- logging to an explicit run ------------------------------------------------------------

Call = TypeVar("Call", bound=Callable[..., Any])


def stores_artifacts(fn: Call) -> Call:
    """An upload that a tracking server fails to store (its artifact store, an S3 bucket say,
    is down or refuses it) ends the command with one line naming the server and what to check,
    instead of MLflow's traceback; the run ends FAILED with that line as its reason."""

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except mlflow.exceptions.MlflowException as exc:
            uri = mlflow.get_tracking_uri()
            if not uri.startswith(("http://", "https://")) or "mlflow-artifacts" not in str(exc):
                raise
            said = str(exc).splitlines()[0]
            reason = said.rsplit("Caused by ", 1)[-1].strip("()") if "Caused by" in said else said
            raise PipelineError(
                f"the MLflow server at {uri} could not store the run's artifacts ({reason}): "
                "the artifact store it writes to (its --artifacts-destination, such as an S3 "
                "endpoint) is down or refused the upload, and the server's log names it. Bring "
                "it back and run again; the outputs written here are kept."
            ) from exc

    return guarded  # type: ignore[return-value]


@stores_artifacts
def log_text(run_id: str, text: str, artifact_file: str) -> None:
    mlflow.MlflowClient().log_text(run_id, text, artifact_file)


def set_tags(run_id: str, tags: Mapping[str, Any]) -> None:
    mlflow.MlflowClient().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_params(run_id: str, params: Mapping[str, Any]) -> None:
    items = [Param(k, str(v)) for k, v in params.items()]
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
        mlflow.MlflowClient().log_batch(run_id, params=items[start : start + 100])


def log_metrics(
    run_id: str,
    metrics: Mapping[str, float],
    step: int = 0,
    model_uri: str | None = None,
    at: float | None = None,
) -> None:
    """Log to the run, timed `at` (seconds since the epoch; default now); with `model_uri` (a
    `models:/ID`), the logged model's page shows them."""
    stamp = int((time.time() if at is None else at) * 1000)
    model_id = model_uri.removeprefix("models:/") if model_uri else None
    items = [Metric(k, float(v), stamp, step, model_id=model_id) for k, v in metrics.items()]
    mlflow.MlflowClient().log_batch(run_id, metrics=items)


def log_epochs(run_id: str, epochs: Sequence[tuple[int, float, Mapping[str, float]]]) -> None:
    """Log each epoch's metrics (rows of step, time in seconds since the epoch, metrics) in as
    few calls as MLflow allows (`MAX_METRICS_PER_BATCH` values each)."""
    items = [
        Metric(k, float(v), int(at * 1000), step)
        for step, at, metrics in epochs
        for k, v in metrics.items()
    ]
    client = mlflow.MlflowClient()
    for start in range(0, len(items), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=items[start : start + MAX_METRICS_PER_BATCH])


MAX_METRICS_PER_BATCH = 1000  # MLflow's limit on one log_batch call
DIGEST_CHARS = 32  # MLflow keeps at most 36 characters of a dataset's digest


CONTEXTS = {"train": "train", "val": "validation", "test": "test"}  # split -> MLflow's word


def log_datasets(
    run_id: str, splits: Mapping[str, Sequence[int]], data_name: str = "mnist"
) -> None:
    """Record splits (`train`, `val`, `test`: the shape of each, examples first) of the dataset
    `data_name` as MLflow datasets of the run (`<data_name>-<split>`): name, the first
    `DIGEST_CHARS` hex digits of the split's SHA-256 (the run's provenance tag
    `data.processed.<split>.sha256` holds all 64), its DVC path and shape, so the runs table's
    Dataset column and the run page show them."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    client = mlflow.MlflowClient()
    tags = client.get_run(run_id).data.tags
    inputs = []
    for split, shape in splits.items():
        digest = tags.get(f"{names.DATA_PREFIX}processed.{split}.sha256", "unknown")
        dataset = Dataset(
            name=f"{data_name}-{split}",
            digest=digest[:DIGEST_CHARS],
            source_type="local",
            source=json.dumps({"uri": f"data/processed/{split}-*.npy"}),
            profile=json.dumps(
                {"features_shape": [int(n) for n in shape], "targets_shape": [int(shape[0])]}
            ),
        )
        inputs.append(DatasetInput(dataset, [InputTag("mlflow.data.context", CONTEXTS[split])]))
    try:
        client.log_inputs(run_id, datasets=inputs)
    except mlflow.exceptions.MlflowException:
        # The store gets or creates each dataset: when two jobs create the same new one at once,
        # its unique key refuses one of them. Tried again, it finds it made; any other error
        # comes back the same.
        client.log_inputs(run_id, datasets=inputs)


@stores_artifacts
def log_images(run_id: str, folder: Path) -> None:
    """Each PNG in `folder` as an MLflow image under a stable key (its file name), so the UI
    can show one figure across runs."""
    from PIL import Image

    client = mlflow.MlflowClient()
    for path in sorted(folder.glob("*.png")):
        with Image.open(path) as image:
            client.log_image(run_id, image.convert("RGB"), key=path.stem, step=0)


@stores_artifacts
def log_table(run_id: str, columns: Mapping[str, list[Any]], artifact_file: str) -> None:
    """A table (column -> values) the MLflow UI shows in the run's artifacts and can compare."""
    mlflow.MlflowClient().log_table(run_id, dict(columns), artifact_file)


@stores_artifacts
def log_artifacts(run_id: str, local_dir: Path, artifact_path: str | None = None) -> None:
    mlflow.MlflowClient().log_artifacts(run_id, str(local_dir), artifact_path)


@stores_artifacts
def log_artifact(run_id: str, local_file: Path, artifact_path: str | None = None) -> None:
    mlflow.MlflowClient().log_artifact(run_id, str(local_file), artifact_path)


@stores_artifacts
def log_keras_model(run_id: str, model: Any, example: Any) -> str:
    """Log `model` to the run with a signature; return its URI. The run records the logged
    `.keras` file's SHA-256 (MLflow saves it again, so it is not models/model.keras's).

    The tensorflow flavour is used: it stores the same `.keras` file. The signature is read off
    `example` (a few inputs) and the model's output shape, without a prediction. No input
    example is stored: MLflow would load the model back and predict with it to check it, a
    fifth of a second per model of a sweep.
    """
    from importlib.metadata import version

    import mlflow.tensorflow
    import numpy as np
    from mlflow.models import Model, infer_signature

    outputs = np.zeros((len(example), *model.output_shape[1:]), dtype=np.float32)
    # Named here, MLflow need not reload the model in a subprocess to infer them.
    requirements = [f"{pkg}=={version(pkg)}" for pkg in ("tensorflow", "keras", "numpy")]
    run = mlflow.MlflowClient().get_run(run_id)
    # Created here, the logged model lands in the run's experiment (MLflow would otherwise
    # pick the active run's or the default one) and carries the run's params.
    logged = mlflow.initialize_logged_model(
        name=names.MODEL_ARTIFACT,
        source_run_id=run_id,
        params=run.data.params,
        experiment_id=run.info.experiment_id,
    )
    info = Model.log(
        artifact_path=None,
        name=names.MODEL_ARTIFACT,
        flavor=mlflow.tensorflow,
        run_id=run_id,
        model_id=logged.model_id,
        model=model,
        signature=infer_signature(example, outputs),
        pip_requirements=requirements,
    )
    from pipeline.tracking.models import logged_digest

    set_tags(
        run_id,
        {
            names.MODEL_URI_TAG: info.model_uri,
            names.LOGGED_SHA256_TAG: logged_digest(info.model_uri),
        },
    )
    return info.model_uri


# ---- finding runs ------------------------------------------------------------------------


def get_run(run_id: str, hint: str) -> Any:
    """The run `run_id` from the store, or a `PipelineError` that ends with `hint`."""
    try:
        return mlflow.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException as exc:
        raise PipelineError(
            f"no run {run_id!r} in the MLflow store {mlflow.get_tracking_uri()}; {hint}"
        ) from exc


def write_run_file(run_id: str, experiment_id: str, path: Path) -> None:
    """Record which MLflow run holds the model at `models/`, for the evaluate stage."""
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"run_id": run_id, "experiment_id": experiment_id}
    write_json(path, info)


def read_run(path: Path) -> Any:
    """The MLflow run train logged (named in models/run.json), checked to be in the store."""
    if not path.is_file():
        raise PipelineError(f"{path} not found; run `uv run dvc repro train` first.")
    run_id = json.loads(path.read_text(encoding="utf-8"))["run_id"]
    return get_run(run_id, f"{path} names it; train again with `uv run dvc repro --force train`.")
