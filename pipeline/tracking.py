"""MLflow: where the store is, how a run starts and ends, and what its parts are called.

The store: MLFLOW_TRACKING_URI when set (a team server), else `tracking.uri` from the config,
else MLflow's default layout at the repository root (`sqlite:///mlflow.db`, artifacts in
`mlruns/`), so `uv run mlflow ui` there shows every run. The repository root is DVC_ROOT when DVC
sets it: a queued experiment runs in a temporary copy, and still logs to its repository's store.
Every command that reads or writes runs resolves it here, the same way.

Runs are explicit: functions take a run id and log through `MlflowClient`, never to whatever
run happens to be active. The names below are the protocol between the modules that write a run
and those that read it (compare, reproduce, runs, the sweep).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from filelock import FileLock
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from pipeline import provenance
from pipeline.errors import PipelineError
from pipeline.paths import PARAMS_FILE, project_root

# ---- names: tags, metrics and artifacts one module writes and another reads --------------
FAILURE_TAG = "failure_reason"
HOST_TAG, PID_TAG = "host", "pid"  # the process that has the run open
MODEL_URI_TAG = "model_uri"
MODEL_SHA256_TAG = "model_sha256"  # of models/model.keras: evaluate checks it before loading
WEIGHTS_SHA256_TAG = "weights_sha256"  # of every weight array: reproduce compares it
REGISTERED_TAG = "registered_version"
CHAMPION_TAG = "champion"
PARENT_TAG = MLFLOW_PARENT_RUN_ID
SWEEP_TAG, SWEEP_PARENT = "sweep", "parent"  # a sweep's parent run: sweep=parent
OVERRIDES_TAG = "sweep_overrides"

TEST_ACCURACY, TEST_LOSS, MACRO_F1 = "test_accuracy", "test_loss", "macro_f1"
VAL_ACCURACY = "val_accuracy"
TRAIN_SECONDS = "train_seconds"
F1_CLASS = "f1_class_{}"

CONFIG_ARTIFACT = "config.yaml"
DIFF_ARTIFACT = "uncommitted.diff"
FIGURES_ARTIFACT = "figures"
MODEL_ARTIFACT = "model"
SUMMARY_ARTIFACT = "summary.csv"

CHAMPION = "champion"  # the registry alias of the best model
# MLflow's UI opens an experiment of this kind on its training runs, not on the GenAI overview.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}

# ---- the store -----------------------------------------------------------------------------


def store_root() -> Path:
    """Where the local store lives: DVC's repository root, else the project root."""
    return Path(os.environ.get("DVC_ROOT") or project_root()).resolve()


def tracking_uri(configured: str | None = None, root: Path | None = None) -> str:
    """MLFLOW_TRACKING_URI if set, else `configured` (`tracking.uri`), else the local store."""
    return (
        os.environ.get("MLFLOW_TRACKING_URI")
        or configured
        or f"sqlite:///{(root or store_root()) / 'mlflow.db'}"
    )


def configured_uri() -> str | None:
    """`tracking.uri` of the project's params.yaml, for commands that read the store."""
    from pipeline.config import load_params

    if not (project_root() / PARAMS_FILE).is_file():
        return None
    return load_params().tracking.uri


# A server that stops answering fails a request within seconds, not the minutes of MLflow's
# defaults (7 retries, backoff factor 2, 120 s timeout): the job fails and says so, the others
# go on. Each is set only where the environment does not set it already.
SERVER_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def check_server(uri: str, timeout: float = 10.0) -> None:
    """Fail fast, before any training, when a tracking server does not answer its health check."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):  # noqa: S310
            pass
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PipelineError(
            f"the MLflow tracking server at {uri} (MLFLOW_TRACKING_URI or tracking.uri) does "
            f"not answer: {reason}. Start it, or use the local store (unset "
            "MLFLOW_TRACKING_URI, tracking=local)."
        ) from exc


def check_store() -> None:
    """On a tracking server, fail at once if it does not answer its health check: work that
    would log to it then fails in a moment, not after each request's retries."""
    uri = mlflow.get_tracking_uri()
    if is_server(uri):
        check_server(uri)


def connect(configured: str | None = None) -> str:
    """Point MLflow's tracking and model registry at the store; return its URI.

    `configured` is `tracking.uri`; a command without a config passes `configured_uri()`.
    """
    uri = tracking_uri(configured)
    if is_server(uri):
        check_server(uri)
        for key, value in SERVER_RETRIES.items():  # unless the user chose otherwise
            os.environ.setdefault(key, value)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise store creation: parallel jobs migrating a new sqlite store at once crash."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    with FileLock(f"{uri.removeprefix('sqlite:///')}.lock"):
        yield


def setup(
    experiment_name: str, configured: str | None = None, registered_model: str | None = None
) -> str:
    """Connect to the store and return the id of `experiment_name`, creating it if new.

    On a tracking server it also checks, before any work, what a run will need: that the
    server takes the user's credentials, that the user may write to the experiment and, with
    `registered_model`, add versions to that model. It stops with the server, the user and
    what is missing otherwise.
    """
    uri = connect(configured)
    if is_server(uri):
        with _server_access(uri, experiment_name, registered_model):
            return _server_setup(experiment_name, registered_model)
    with _store_lock(uri):
        experiment = mlflow.get_experiment_by_name(experiment_name)
        if experiment is not None:
            if not EXPERIMENT_KIND.items() <= experiment.tags.items():
                for key, value in EXPERIMENT_KIND.items():
                    mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)
            return experiment.experiment_id
        # A sqlite store keeps artifacts in mlruns/ beside its mlflow.db; a server decides.
        local = uri.startswith("sqlite:///")
        location = (
            (Path(uri.removeprefix("sqlite:///")).parent / "mlruns").as_uri() if local else None
        )
        return mlflow.create_experiment(
            experiment_name, artifact_location=location, tags=EXPERIMENT_KIND
        )


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _server_setup(experiment_name: str, registered_model: str | None) -> str:
    """`setup` on a tracking server: every step a write the run will make, so a user without
    the right is stopped here, not after training."""
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        experiment_id = client.create_experiment(experiment_name, tags=EXPERIMENT_KIND)
    else:
        experiment_id = experiment.experiment_id
        for key, value in EXPERIMENT_KIND.items():  # a write: needs EDIT on the experiment
            client.set_experiment_tag(experiment_id, key, value)
    if registered_model:
        try:
            model = client.get_registered_model(registered_model)
        except mlflow.exceptions.MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
        else:  # a write: needs EDIT on the model, as adding a version does
            client.update_registered_model(registered_model, model.description or "")
    return experiment_id


@contextmanager
def _server_access(uri: str, experiment: str, registered_model: str | None) -> Iterator[None]:
    """Turn the server's 401 and 403 into an error naming the server, the user and the need."""
    try:
        yield
    except mlflow.exceptions.MlflowException as exc:
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        who = f"user {user!r}" if user else "a request without credentials"
        status = exc.get_http_status_code()  # from the response's status or its error code
        if status == 401:
            need = (
                "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
                if user
                else "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
            )
            raise PipelineError(
                f"the MLflow server {uri} did not accept {who} (401 unauthorized): {need}."
            ) from None
        if status == 403:
            what = f"experiment {experiment!r}"
            if registered_model:
                what += f" and registered model {registered_model!r}"
            raise PipelineError(
                f"the MLflow server {uri} refused {who} a write the run needs (403 permission "
                f"denied): a run needs EDIT on {what}. Ask an admin for it (docs/scaling.md, "
                f"'Users and permissions'). The server said: {str(exc)[:300]}"
            ) from None
        raise


# ---- run lifecycle -----------------------------------------------------------------------


def process_tags() -> dict[str, str]:
    """Where the run's process lives, so that `pipeline.runs --cleanup` can tell it died."""
    return {HOST_TAG: platform.node(), PID_TAG: str(os.getpid())}


INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")


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
        tags[PARENT_TAG] = parent_run_id
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
    client.set_tag(run_id, FAILURE_TAG, f"{type(error).__name__}: {error}"[:5000])
    client.set_terminated(run_id, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")


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
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in INTERRUPTS}
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
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
    close: bool = True,
) -> Iterator[str]:
    """A `tracked_run` for one trained model, with its provenance logged before any work.

    Tags from `provenance.provenance`; artifacts: the resolved config (`config.yaml`) and, when
    the tree is dirty, the uncommitted diff (`uncommitted.diff`, dvc.lock aside).
    """
    tags = {**provenance.provenance(code_dir, data_digests, config_text), **(tags or {})}
    with tracked_run(experiment_id, run_name, tags, None, parent_run_id, close) as run_id:
        client = mlflow.MlflowClient()
        client.log_text(run_id, config_text, CONFIG_ARTIFACT)
        if tags.get(provenance.GIT_DIRTY) == "true":
            client.log_text(run_id, provenance.uncommitted_diff(code_dir), DIFF_ARTIFACT)
        yield run_id


# ---- logging to an explicit run ------------------------------------------------------------


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


DIGEST_CHARS = 32  # MLflow keeps at most 36 characters of a dataset's digest


CONTEXTS = {"train": "train", "val": "validation", "test": "test"}  # split -> MLflow's word


def log_datasets(run_id: str, splits: Mapping[str, tuple[Any, Any]]) -> None:
    """Record splits (`train`, `val`, `test`) as MLflow datasets of the run: name, the first
    `DIGEST_CHARS` hex digits of the split file's SHA-256 (the run's provenance tag
    `data.processed.<split>.sha256` holds all 64), its DVC path and shape, so the runs table's
    Dataset column and the run page show them."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    client = mlflow.MlflowClient()
    tags = client.get_run(run_id).data.tags
    inputs = []
    for split, (x, y) in splits.items():
        digest = tags.get(f"{provenance.DATA_PREFIX}processed.{split}.sha256", "unknown")
        dataset = Dataset(
            name=f"mnist-{split}",
            digest=digest[:DIGEST_CHARS],
            source_type="local",
            source=json.dumps({"uri": f"data/processed/{split}.npz"}),
            profile=json.dumps({"features_shape": list(x.shape), "targets_shape": list(y.shape)}),
        )
        inputs.append(DatasetInput(dataset, [InputTag("mlflow.data.context", CONTEXTS[split])]))
    try:
        client.log_inputs(run_id, datasets=inputs)
    except mlflow.exceptions.MlflowException:
        # The store gets or creates each dataset: when two jobs create the same new one at once,
        # its unique key refuses one of them. Tried again, it finds it made; any other error
        # comes back the same.
        client.log_inputs(run_id, datasets=inputs)


def log_images(run_id: str, folder: Path) -> None:
    """Each PNG in `folder` as an MLflow image under a stable key (its file name), so the UI
    can show one figure across runs."""
    from PIL import Image

    client = mlflow.MlflowClient()
    for path in sorted(folder.glob("*.png")):
        with Image.open(path) as image:
            client.log_image(run_id, image.convert("RGB"), key=path.stem, step=0)


def log_table(run_id: str, columns: Mapping[str, list[Any]], artifact_file: str) -> None:
    """A table (column -> values) the MLflow UI shows in the run's artifacts and can compare."""
    mlflow.MlflowClient().log_table(run_id, dict(columns), artifact_file)


def log_artifacts(run_id: str, local_dir: Path, artifact_path: str | None = None) -> None:
    mlflow.MlflowClient().log_artifacts(run_id, str(local_dir), artifact_path)


def log_artifact(run_id: str, local_file: Path, artifact_path: str | None = None) -> None:
    mlflow.MlflowClient().log_artifact(run_id, str(local_file), artifact_path)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`: the resolved config as MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def log_keras_model(run_id: str, model: Any, example: Any) -> str:
    """Log `model` to the run with a signature; return its URI.

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
        name=MODEL_ARTIFACT,
        source_run_id=run_id,
        params=run.data.params,
        experiment_id=run.info.experiment_id,
    )
    info = Model.log(
        artifact_path=None,
        name=MODEL_ARTIFACT,
        flavor=mlflow.tensorflow,
        run_id=run_id,
        model_id=logged.model_id,
        model=model,
        signature=infer_signature(example, outputs),
        pip_requirements=requirements,
    )
    set_tags(run_id, {MODEL_URI_TAG: info.model_uri})
    return info.model_uri


def register(run_id: str, model_uri: str, name: str, val_accuracy: float) -> tuple[str, bool]:
    """Register the model as a new version of `name`; move the `champion` alias to it if its
    validation accuracy beats the current champion's (never the test set: that only reports).
    Returns the version and whether it moved.

    The run records both (`registered_version`, `champion` tags).
    """
    client = mlflow.MlflowClient()
    try:  # the client, unlike mlflow.register_model, prints nothing
        client.create_registered_model(name)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    model_id = model_uri.removeprefix("models:/")
    source = client.get_logged_model(model_id).artifact_location
    created = client.create_model_version(name, source, run_id=run_id, model_id=model_id)
    version = str(created.version)
    client.set_model_version_tag(name, version, VAL_ACCURACY, str(val_accuracy))
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
        best = float(current.tags.get(VAL_ACCURACY, "-1"))  # older versions: any score wins
    except mlflow.exceptions.MlflowException:  # no champion yet
        best = None
    promoted = best is None or val_accuracy > best
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    set_tags(run_id, {REGISTERED_TAG: f"{name}/{version}", CHAMPION_TAG: str(promoted).lower()})
    return version, promoted


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
    path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def read_run(path: Path) -> Any:
    """The MLflow run train logged (named in models/run.json), checked to be in the store."""
    if not path.is_file():
        raise PipelineError(f"{path} not found; run `uv run dvc repro train` first.")
    run_id = json.loads(path.read_text(encoding="utf-8"))["run_id"]
    return get_run(run_id, f"{path} names it; train again with `uv run dvc repro --force train`.")
