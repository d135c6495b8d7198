"""The model registry: a version per evaluated model, and the `champion` alias on the best.

The champion is judged on validation accuracy, never on the test set (that only reports).
"""

from __future__ import annotations

import mlflow

from pipeline.tracking import names
from pipeline.tracking.runs import set_tags


def register(run_id: str, model_uri: str, name: str, val_accuracy: float) -> tuple[str, bool]:
    """Register the model as a new version of `name`; the `champion` alias moves to it if its
    validation accuracy beats every other version's (never the test set: that only reports).
    Returns the version and whether it is the champion.

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
    promoted = crown(name) == version
    set_tags(
        run_id,
        {names.REGISTERED_TAG: f"{name}/{version}", names.CHAMPION_TAG: str(promoted).lower()},
    )
    return version, promoted


def crown(name: str, rounds: int = 20) -> str | None:
    """Put the `champion` alias on the version of `name` with the best validation accuracy (the
    earliest of equals) and return it.

    There is no compare-and-set in the registry, so the alias is checked again after each move:
    of two evaluations registering at once, the one that moves it last re-reads every version
    and moves it again if the other's is better. The alias ends on the best either way.
    """
    client = mlflow.MlflowClient()
    best = None
    for _ in range(rounds):
        versions = client.search_model_versions(f"name = '{name}'")
        scored = [
            (float(v.tags[names.VAL_ACCURACY]), -int(v.version), str(v.version))
            for v in versions
            if names.VAL_ACCURACY in v.tags
        ]
        if not scored:
            return None
        best = max(scored)[2]
        try:
            current = str(client.get_model_version_by_alias(name, names.CHAMPION).version)
        except mlflow.exceptions.MlflowException:  # no champion yet
            current = None
        if current == best:
            return best
        client.set_registered_model_alias(name, names.CHAMPION, best)
    return best
