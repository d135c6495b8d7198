"""The MLflow store: where it is, connecting to it, and a team server's health and rights.

The store is MLFLOW_TRACKING_URI when set (a team server), else `tracking.uri` from the config,
else MLflow's default layout at the repository root (`sqlite:///mlflow.db`, artifacts in
`mlruns/`), so `uv run mlflow ui` there shows every run. The repository root is DVC_ROOT when DVC
sets it: a queued experiment runs in a temporary copy, and still logs to its repository's store.
Every command that reads or writes runs resolves it here, the same way.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
from filelock import FileLock

from pipeline.core import names
from pipeline.core.errors import PipelineError
from pipeline.core.paths import PARAMS_FILE, project_root


def store_root() -> Path:
    """Where the local store lives: DVC's repository root, else the project root."""
    return Path(os.environ.get("DVC_ROOT") or project_root()).resolve()


def tracking_uri(configured: str | None = None, root: Path | None = None) -> str:
    """MLFLOW_TRACKING_URI if set, else `configured` (`tracking.uri`), else the local store.

    A URI carrying a password is refused: it would be shown in errors, pages and run files.
    """
    uri = (
        os.environ.get("MLFLOW_TRACKING_URI")
        or configured
        or f"sqlite:///{(root or store_root()) / 'mlflow.db'}"
    )
    check_no_secret(uri)
    return uri


def check_no_secret(uri: str) -> None:
    """Refuse a store URI with a password in it, saying where the password goes instead."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(uri)
        password = parts.password
    except ValueError:  # a malformed port: MLflow says what is wrong with it
        return
    if password is None:
        return
    shown = uri.replace(f":{password}@", ":***@", 1)
    if parts.scheme in ("http", "https"):
        where = (
            "put the user name in MLFLOW_TRACKING_USERNAME and the password in "
            "MLFLOW_TRACKING_PASSWORD, and give the URI without them"
        )
    else:
        where = "give the password to the database driver (PostgreSQL: PGPASSWORD or ~/.pgpass)"
    raise PipelineError(
        f"the MLflow store URI {shown} carries a password, which would be shown in errors, "
        f"pages and run files; {where}."
    )


def configured_uri() -> str | None:
    """`tracking.uri` of the project's params.yaml, for commands that read the store."""
    from pipeline.core.config import load_params

    if not (project_root() / PARAMS_FILE).is_file():
        return None
    return load_params().tracking.uri


# A command that reads the store (the app, compare, runs) fails a request to a server that stops
# answering within seconds, not the minutes of MLflow's defaults (7 retries, backoff factor 2,
# 120 s timeout). Training and sweeps wait longer (`tracking.server_wait_s`, `retries_for`): a
# sweep of hours outlives a server's restart. Artifacts go through the server both ways: a
# server whose artifacts are in S3 offers clients presigned URLs to download straight from the
# bucket, which a client outside the bucket's network (or without its CA) cannot use. Each is set
# only where the environment does not set it already.
SERVER_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false",
    "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "false",
}
RETRY_LIMIT = 10  # MLflow refuses more retries than this
BACKOFF_MAX = 120  # urllib3 waits at most this long between two tries


def retries_for(wait_s: float) -> tuple[int, float]:
    """The fewest of MLflow's retries (backoff factor 1: urllib3 waits 0, 2, 4, 8 ... s, at most
    BACKOFF_MAX, between tries) that wait at least `wait_s` in all, and how long they wait."""
    total, retries = 0.0, 0
    while total < wait_s and retries < RETRY_LIMIT:
        retries += 1
        total += 0 if retries == 1 else min(BACKOFF_MAX, 2 ** (retries - 1))
    return retries, total


class ServerAway(logging.Handler):
    """Says once, in one line, that the tracking server does not answer and how long requests
    wait for it (urllib3's warning on each retry is dropped)."""

    def __init__(self, uri: str, wait_s: float) -> None:
        super().__init__(logging.WARNING)
        self.uri, self.wait_s, self.said = uri, wait_s, False

    def emit(self, record: logging.LogRecord) -> None:
        if "Retrying" not in record.getMessage():
            return
        why = record.args[1] if isinstance(record.args, tuple) and len(record.args) > 1 else ""
        self.say(type(why).__name__ if isinstance(why, BaseException) else "no answer")

    def say(self, reason: str) -> None:
        if self.said:
            return
        self.said = True
        print(
            f"the MLflow server at {self.uri} does not answer ({reason}); waiting up to "
            f"{self.wait_s:.0f} s for it (tracking.server_wait_s), then carrying on",
            file=sys.stderr,
            flush=True,
        )


def wait_for_server(uri: str, wait_s: float) -> None:
    """Make this process's requests to the server at `uri` wait up to `wait_s` seconds for it
    when it stops answering, saying so once."""
    retries, _ = retries_for(wait_s)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(retries)
    logger = logging.getLogger("urllib3.connectionpool")
    found = [h for h in logger.handlers if isinstance(h, ServerAway)]
    if found:  # said once per process, however many jobs it runs
        found[0].uri, found[0].wait_s = uri, wait_s
    else:
        logger.addHandler(ServerAway(uri, wait_s))
    logger.propagate = False


def server_tls():
    """The TLS context MLflow's client uses for a server: the CA file in
    MLFLOW_TRACKING_SERVER_CERT_PATH, or no check with MLFLOW_TRACKING_INSECURE_TLS=true."""
    import ssl

    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        return ssl._create_unverified_context()  # noqa: S323 - asked for, as MLflow's client does
    return ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"))


def check_server(uri: str, timeout: float = 10.0) -> None:
    """Fail fast, before any training, when a tracking server does not answer its health check."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(  # noqa: S310
            f"{uri.rstrip('/')}/health", timeout=timeout, context=server_tls()
        ):
            pass
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PipelineError(
            f"the MLflow tracking server at {uri} (MLFLOW_TRACKING_URI or tracking.uri) does "
            f"not answer: {reason}. Start it, or use the local store (unset "
            "MLFLOW_TRACKING_URI, tracking=local)."
        ) from exc


def _health_within(uri: str, wait_s: float) -> bool:
    """Wait up to `wait_s` for the server's health check to answer, saying so once (as
    `ServerAway` does); whether it answered."""
    import time

    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            check_server(uri, timeout=5)
            return True
        except PipelineError as exc:
            reason = type(exc.__cause__).__name__ if exc.__cause__ else "no answer"
            for handler in logging.getLogger("urllib3.connectionpool").handlers:
                if isinstance(handler, ServerAway):
                    handler.say(reason)
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
    return False


def check_store() -> None:
    """On a tracking server, check that it answers its health check, waiting for it as long as
    this process's requests would (`wait_for_server`), else at once: work that would log to it
    then fails in a moment, not after each request's retries."""
    uri = mlflow.get_tracking_uri()
    if is_server(uri):
        waiting = [h for h in logging.getLogger("urllib3.connectionpool").handlers
                   if isinstance(h, ServerAway)]  # fmt: skip
        if waiting and waiting[0].wait_s and _health_within(uri, waiting[0].wait_s):
            return  # it answered: a blip right after is for the requests' own retries
        check_server(uri)


def connect(
    configured: str | None = None, wait_s: float | None = None, patient: bool = False
) -> str:
    """Point MLflow's tracking and model registry at the store; return its URI.

    `configured` is `tracking.uri`; a command without a config passes `configured_uri()`. A
    server must answer now (a command's first contact: a wrong URL or a server not started is
    said at once); `patient` (a sweep's job, once the sweep has reached the server) waits up to
    `wait_s` for it. With `wait_s` (`tracking.server_wait_s`: training, sweeps), later requests
    wait that long for the server when it stops answering.
    """
    uri = tracking_uri(configured)
    if is_server(uri):
        if wait_s is not None:
            wait_for_server(uri, wait_s)
        if not (patient and wait_s and _health_within(uri, wait_s)):
            check_server(uri)
        for key, value in SERVER_SETTINGS.items():  # unless the user chose otherwise
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
    experiment_name: str,
    configured: str | None = None,
    registered_model: str | None = None,
    wait_s: float | None = None,
    patient: bool = False,
) -> str:
    """Connect to the store and return the id of `experiment_name`, creating it if new; a
    server's requests wait up to `wait_s` for it, and with `patient` so does this first one
    (`connect`).

    On a tracking server it also checks, before any work, what a run will need: that the
    server takes the user's credentials, that the user may write to the experiment and, with
    `registered_model`, add versions to that model. It stops with the server, the user and
    what is missing otherwise.
    """
    uri = connect(configured, wait_s, patient)
    if is_server(uri):
        with _server_access(uri, experiment_name, registered_model):
            return _server_setup(experiment_name, registered_model)
    with _store_lock(uri):
        experiment = mlflow.get_experiment_by_name(experiment_name)
        if experiment is not None:
            if not names.EXPERIMENT_KIND.items() <= experiment.tags.items():
                for key, value in names.EXPERIMENT_KIND.items():
                    mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)
            return experiment.experiment_id
        # A sqlite store keeps artifacts in mlruns/ beside its mlflow.db; a server decides.
        local = uri.startswith("sqlite:///")
        location = (
            (Path(uri.removeprefix("sqlite:///")).parent / "mlruns").as_uri() if local else None
        )
        return mlflow.create_experiment(
            experiment_name, artifact_location=location, tags=names.EXPERIMENT_KIND
        )


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _server_setup(experiment_name: str, registered_model: str | None) -> str:
    """`setup` on a tracking server: every step a write the run will make, so a user without
    the right is stopped here, not after training."""
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        experiment_id = client.create_experiment(experiment_name, tags=names.EXPERIMENT_KIND)
    else:
        experiment_id = experiment.experiment_id
        for key, value in names.EXPERIMENT_KIND.items():  # a write: needs EDIT on the experiment
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
