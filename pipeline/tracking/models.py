"""Models read from the MLflow store without running anything they carry.

A logged model's folder may hold more than its `.keras` file: MLflow's TensorFlow flavour would
unpickle a `custom_objects.cloudpickle`, and load h5 files and SavedModels, all of which can run
code. Here the folder is listed first and refused unless it holds only what this project logs;
then only `data/model.keras` is downloaded, its SHA-256 checked against the digest its run
recorded (`logged_model_sha256`), and it is loaded by Keras in safe mode.

Inputs: a model URI (`models:/NAME@ALIAS`, `models:/NAME/VERSION`, `models:/m-ID`).
Outputs: the Keras model and what is known of it (name, version, run).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow

from pipeline.core import names
from pipeline.core.errors import PipelineError
from pipeline.core.shards import Shards, picture_shape

KERAS_FILE = "data/model.keras"
# Everything the TensorFlow flavour writes for a `.keras` model; nothing here can run code.
LOGGED_FILES = frozenset(
    {
        "MLmodel",
        "conda.yaml",
        "python_env.yaml",
        "requirements.txt",
        "registered_model_meta",
        "input_example.json",
        "serving_input_example.json",
        KERAS_FILE,
        "data/keras_module.txt",
        "data/save_format.txt",
    }
)


class Refused(PipelineError):
    """A model the store holds but that is not loaded: unexpected files, or a wrong digest."""


@dataclass(frozen=True)
class Located:
    """Where a model URI's files are, which run made them and how to name it in errors."""

    location: str
    run_id: str | None
    what: str
    about: dict[str, Any]


def locate(uri: str) -> Located:
    """The artifact location of a `models:/` URI, following the registry where it names one."""
    client = mlflow.MlflowClient()
    if not uri.startswith("models:/"):
        raise PipelineError(
            f"model URI {uri!r}: only models:/NAME@ALIAS, models:/NAME/VERSION and models:/m-ID "
            "are loaded (or --run RUN_ID, or --model for a .keras file)."
        )
    target = uri.removeprefix("models:/")
    try:
        if target.startswith("m-") and "/" not in target and "@" not in target:
            logged = client.get_logged_model(target)
            return Located(logged.artifact_location, logged.source_run_id, f"model {target}", {})
        if "@" in target:
            name, alias = target.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
            what = f"version {version.version} of {name} (alias {alias})"
        else:
            name, number = target.rsplit("/", 1)
            version = client.get_model_version(name, number)
            what = f"version {version.version} of {name}"
    except (mlflow.exceptions.MlflowException, ValueError) as exc:
        message = getattr(exc, "message", str(exc))
        raise PipelineError(f"cannot load model {uri}: {message}.") from exc
    location = version.source
    if location.startswith("models:/"):  # registered from a logged model's URI
        location = client.get_logged_model(location.removeprefix("models:/")).artifact_location
    return Located(location, version.run_id, what, {"version": str(version.version)})


def listing(location: str, folder: str = "") -> list[str]:
    """Every file under `location`, as paths relative to it."""
    found = []
    uri = f"{location.rstrip('/')}/{folder}" if folder else location
    for item in mlflow.artifacts.list_artifacts(artifact_uri=uri):
        path = f"{folder}/{Path(item.path).name}" if folder else Path(item.path).name
        found.extend(listing(location, path) if item.is_dir else [path])
    return found


def logged_digest(uri: str) -> str:
    """The SHA-256 of the `.keras` file of the model just logged at `uri` (models:/m-ID)."""
    from pipeline.core.data import sha256_file

    location = mlflow.MlflowClient().get_logged_model(uri.removeprefix("models:/"))
    with tempfile.TemporaryDirectory(prefix="model-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{location.artifact_location.rstrip('/')}/{KERAS_FILE}", dst_path=tmp
        )
        return sha256_file(Path(local))


def load_logged(uri: str, reading: bool = False) -> tuple[Any, dict[str, Any]]:
    """The Keras model at `uri` and what is known of it, or a `PipelineError` saying why not;
    with `reading`, the model to read pictures with (`numpy_model.load_predictor`).

    Nothing from the store runs: files other than the `.keras` model and MLflow's text files are
    refused before anything is downloaded, and the model's digest must be its run's.
    """
    if reading:
        from pipeline.core.numpy_model import load_predictor as loader
    else:
        from pipeline.core.model import load_model as loader

    place = locate(uri)
    files = listing(place.location)
    unexpected = sorted(set(files) - LOGGED_FILES)
    if unexpected or KERAS_FILE not in files:
        found = ", ".join(unexpected[:8]) + (" ..." if len(unexpected) > 8 else "")
        raise Refused(
            f"refused {place.what} ({uri}): its model folder "
            + (f"holds {found}" if unexpected else f"has no {KERAS_FILE}")
            + f"; only a {KERAS_FILE} loaded in Keras safe mode is accepted (pickles, h5 files "
            "and SavedModels can run code when loaded). Register a model this pipeline trained."
        )
    digest = None
    if place.run_id:
        try:
            digest = (
                mlflow.MlflowClient().get_run(place.run_id).data.tags.get(names.LOGGED_SHA256_TAG)
            )
        except mlflow.exceptions.MlflowException:
            digest = None
    if not digest:
        raise Refused(
            f"refused {place.what} ({uri}): its run {place.run_id} records no "
            f"{names.LOGGED_SHA256_TAG}, so the model file cannot be checked (it was logged "
            "before digests were recorded). Train again and give the new version the alias "
            f"(MlflowClient().set_registered_model_alias(NAME, '{names.CHAMPION}', VERSION)), "
            "or name another model with --model or --run."
        )
    with tempfile.TemporaryDirectory(prefix="model-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{place.location.rstrip('/')}/{KERAS_FILE}", dst_path=tmp
        )
        try:
            model = loader(Path(local), digest)
        except PipelineError as exc:
            raise Refused(f"refused {place.what} ({uri}): {exc}") from exc
    return model, {**place.about, "run_id": place.run_id}


def predicted_labels(uri: str, x: Any, classes: list[str]) -> Any:
    """The labels the model at `uri` (loaded as `load_logged` does) predicts for the images `x`
    (an array, or a prepared split read a chunk at a time) of a dataset with `classes`; a
    `PipelineError` saying why when it cannot score them: it reads images of another size or
    channels, or knows other classes, or is refused."""
    import json

    from pipeline.core.model import predict

    model, about = load_logged(uri)
    shape = picture_shape(model.input_shape[1:])
    given = x.shape if isinstance(x, Shards) else picture_shape(x.shape[1:])
    if shape != given:
        raise PipelineError(
            f"it reads {shape[0]}x{shape[1]} images of {shape[2]} channel(s), these are "
            f"{given[0]}x{given[1]} of {given[2]}"
        )
    run = mlflow.MlflowClient().get_run(about["run_id"]) if about.get("run_id") else None
    known = json.loads(run.data.tags.get(names.CLASSES_TAG, "null")) if run else None
    if known is not None and known != list(classes) or model.output_shape[-1] != len(classes):
        raise PipelineError(
            f"its classes are {known or model.output_shape[-1]}, these examples' are "
            f"{list(classes)}"
        )
    return predict(model, x).argmax(axis=1)
