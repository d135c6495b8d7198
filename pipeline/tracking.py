"""Everything MLflow: where the store is, how a run starts and ends, what it is tagged with.

The store is MLflow's own default layout at the project root: `sqlite:///mlflow.db` with
artifacts in `mlruns/`, so `uv run mlflow ui` there shows every run. The root is DVC_ROOT when
DVC sets it (also for queued experiments run in a temporary copy), else the working directory.
A MLFLOW_TRACKING_URI in the environment (a team server) wins.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import signal
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import RunStatus

from pipeline.config import Config
from pipeline.data import sha256_file
from pipeline.errors import PipelineError
from pipeline.paths import RUN_FILE

FAILURE_TAG = "failure_reason"


def project_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri(root: Path | None = None, configured: str | None = None) -> str:
    """MLFLOW_TRACKING_URI if set, else `tracking.uri` from the config, else the local store."""
    return (
        os.environ.get("MLFLOW_TRACKING_URI")
        or configured
        or f"sqlite:///{(root or project_root()) / 'mlflow.db'}"
    )


@contextmanager
def _local_store_lock(uri: str) -> Iterator[None]:
    """Serialise store creation: parallel jobs migrating a new sqlite store at once crash."""
    if not uri.startswith("sqlite:"):
        yield
        return
    import fcntl

    with Path(f"{uri.removeprefix('sqlite:///')}.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def use_store(uri: str) -> None:
    """Point MLflow's tracking and model registry at the same store."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


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


def setup(experiment_name: str, uri: str | None = None) -> str:
    """Point MLflow at the store and return the id of `experiment_name`, creating it if new.

    `uri` is `tracking.uri` from the config (a server), None for the project's local store.
    """
    root = project_root()
    uri = tracking_uri(root, uri)
    if uri.startswith(("http://", "https://")):
        check_server(uri)
    use_store(uri)
    with _local_store_lock(uri):
        experiment = mlflow.get_experiment_by_name(experiment_name)
        if experiment is not None:
            return experiment.experiment_id
        # A sqlite store keeps artifacts in mlruns/ beside its mlflow.db; a server decides.
        local = uri.startswith("sqlite:///")
        location = (
            (Path(uri.removeprefix("sqlite:///")).parent / "mlruns").as_uri() if local else None
        )
        return mlflow.create_experiment(experiment_name, artifact_location=location)


def run_name(cfg: Config) -> str:
    """A readable name saying what differs between runs, such as `mlp-h128-e5`."""
    return f"{cfg.model.name}-h{cfg.model.hidden_units}-e{cfg.train.epochs}"


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


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_tags(root: Path) -> dict[str, str]:
    """Commit, branch and dirty flag of the code a run was made from.

    dvc.lock is left out of the dirty check: DVC rewrites it while the pipeline runs.
    """
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": "none"}
    status = _git(root, "status", "--porcelain", "--untracked-files=no", "--", ".", ":!dvc.lock")
    return {
        "git_commit": commit,
        "git_branch": _git(root, "rev-parse", "--abbrev-ref", "HEAD") or "",
        "git_dirty": str(bool(status)).lower(),
    }


ENV_PACKAGES = ("tensorflow", "keras", "mlflow", "numpy")
REPRODUCES_ENV = "PIPELINE_REPRODUCES"
CONFIG_ARTIFACT = "config.yaml"
DIFF_ARTIFACT = "uncommitted.diff"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_tags() -> dict[str, str]:
    """What else the numbers depend on: interpreter, library versions, processor."""
    from importlib.metadata import version

    tags = {"env.python": platform.python_version(), "env.cpu": cpu_model()}
    tags.update({f"env.{pkg}": version(pkg) for pkg in ENV_PACKAGES})
    return tags


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def provenance_tags(
    code_dir: Path, data_digests: Mapping[str, str], config_text: str
) -> dict[str, str]:
    """Tags that say exactly what a run was made from.

    Git state of `code_dir`, the DVC experiment, the run it reproduces, the SHA-256 of the
    resolved config, of uv.lock and of each data file, and the environment.
    """
    tags = git_tags(code_dir)
    tags["params_sha256"] = _sha256_text(config_text)
    lock = code_dir / "uv.lock"
    if lock.is_file():
        tags["uv_lock_sha256"] = sha256_file(lock)
    tags.update({f"data.{name}.sha256": digest for name, digest in data_digests.items()})
    for var in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        if os.environ.get(var):
            tags[var.lower()] = os.environ[var]
    if os.environ.get(REPRODUCES_ENV):
        tags["reproduces"] = os.environ[REPRODUCES_ENV]
    tags.update(environment_tags())
    return tags


@contextmanager
def model_run(
    code_dir: Path, config_text: str, data_digests: Mapping[str, str], **start_run_kwargs: Any
) -> Iterator[mlflow.ActiveRun]:
    """A `tracked_run` for one trained model, with its provenance logged before any work.

    Tags from `provenance_tags`; artifacts: the resolved config (`config.yaml`) and, when the
    tree is dirty, the uncommitted diff (`uncommitted.diff`, dvc.lock aside).
    """
    tags = {
        **provenance_tags(code_dir, data_digests, config_text),
        **start_run_kwargs.pop("tags", {}),
    }
    with tracked_run(tags=tags, **start_run_kwargs) as run:
        mlflow.log_text(config_text, CONFIG_ARTIFACT)
        if tags.get("git_dirty") == "true":
            diff = _git(code_dir, "diff", "HEAD", "--binary", "--", ".", ":!dvc.lock") or ""
            mlflow.log_text(diff + "\n", DIFF_ARTIFACT)
        yield run


def process_tags() -> dict[str, str]:
    """Where the run's process lives, so that `pipeline.runs --cleanup` can tell it died."""
    return {"host": platform.node(), "pid": str(os.getpid())}


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")


@contextmanager
def tracked_run(**start_run_kwargs: Any) -> Iterator[mlflow.ActiveRun]:
    """`mlflow.start_run`, ended FINISHED on success, KILLED on SIGINT/SIGTERM, else FAILED.

    The reason for a failure is kept in the run's `failure_reason` tag.
    """
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    tags = {**start_run_kwargs.pop("tags", {}), **process_tags()}
    run = mlflow.start_run(tags=tags, **start_run_kwargs)
    try:
        yield run
    except BaseException as exc:
        status = RunStatus.KILLED if isinstance(exc, KeyboardInterrupt) else RunStatus.FAILED
        mlflow.set_tag(FAILURE_TAG, f"{type(exc).__name__}: {exc}"[:5000])
        mlflow.end_run(RunStatus.to_string(status))
        raise
    else:
        mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))
    finally:
        signal.signal(signal.SIGTERM, previous)


def write_run_file(run: mlflow.ActiveRun, path: Path = RUN_FILE) -> None:
    """Record which MLflow run holds the model at `models/`, for the evaluate stage."""
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id}
    path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def read_run(path: Path = RUN_FILE) -> Any:
    """The MLflow run train logged (named in models/run.json), checked to be in the store."""
    if not path.is_file():
        raise PipelineError(f"{path} not found; run `uv run dvc repro train` first.")
    run_id = json.loads(path.read_text(encoding="utf-8"))["run_id"]
    return get_run(run_id, f"{path} names it; train again with `uv run dvc repro --force train`.")


def get_run(run_id: str, hint: str) -> Any:
    """The run `run_id` from the store, or a `PipelineError` that ends with `hint`."""
    try:
        return mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException as exc:
        raise PipelineError(
            f"no run {run_id!r} in the MLflow store {mlflow.get_tracking_uri()}; {hint}"
        ) from exc


def log_keras_model(model: Any, example: Any) -> str:
    """Log `model` with a signature and an input example.

    The tensorflow flavour is used: it stores the same `.keras` file and, unlike the keras
    flavour in MLflow 3.17, accepts an input example. The signature is read off the model's
    output shape, without a prediction.
    """
    from importlib.metadata import version

    import numpy as np
    from mlflow.models import infer_signature

    outputs = np.zeros((len(example), *model.output_shape[1:]), dtype=np.float32)
    # Named here, MLflow need not reload the model in a subprocess to infer them.
    requirements = [f"{pkg}=={version(pkg)}" for pkg in ("tensorflow", "keras", "numpy")]
    info = mlflow.tensorflow.log_model(
        model,
        name="model",
        signature=infer_signature(example, outputs),
        input_example=example,
        pip_requirements=requirements,
    )
    mlflow.set_tag("model_uri", info.model_uri)
    return info.model_uri


CHAMPION = "champion"


def register(model_uri: str, name: str, test_accuracy: float) -> tuple[str, bool]:
    """Register the model as a new version of `name`; move the `champion` alias to it if its
    test accuracy beats the current champion's. Returns the version and whether it moved.

    The run records both (`registered_version`, `champion` tags).
    """
    client = mlflow.MlflowClient()
    version = str(mlflow.register_model(model_uri, name).version)
    client.set_model_version_tag(name, version, "test_accuracy", str(test_accuracy))
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
        best = float(current.tags.get("test_accuracy", "-1"))
    except mlflow.exceptions.MlflowException:  # no champion yet
        best = None
    promoted = best is None or test_accuracy > best
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    mlflow.set_tags({"registered_version": f"{name}/{version}", "champion": str(promoted).lower()})
    return version, promoted


def epoch_logger() -> Any:
    """A Keras callback logging each epoch's metrics to the active run (step = epoch, from 1)."""
    import keras

    def log(epoch: int, logs: dict[str, float] | None) -> None:
        mlflow.log_metrics({k: float(v) for k, v in (logs or {}).items()}, step=epoch + 1)

    return keras.callbacks.LambdaCallback(on_epoch_end=log)
