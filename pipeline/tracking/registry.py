"""The model registry: a version per evaluated model, and the `champion` alias on the best.

The champion is judged on validation accuracy, never on the test set (that only reports).
"""

from __future__ import annotations

import mlflow

from pipeline.tracking import names
from pipeline.tracking.runs import set_tags


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
    client.set_model_version_tag(name, version, names.VAL_ACCURACY, str(val_accuracy))
    try:
        current = client.get_model_version_by_alias(name, names.CHAMPION)
        best = float(current.tags.get(names.VAL_ACCURACY, "-1"))  # older versions: any score wins
    except mlflow.exceptions.MlflowException:  # no champion yet
        best = None
    promoted = best is None or val_accuracy > best
    if promoted:
        client.set_registered_model_alias(name, names.CHAMPION, version)
    set_tags(
        run_id,
        {names.REGISTERED_TAG: f"{name}/{version}", names.CHAMPION_TAG: str(promoted).lower()},
    )
    return version, promoted
