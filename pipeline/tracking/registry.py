"""The model registry: a version per evaluated model, and the `champion` alias, which moves only
on paired evidence.

A new version (the challenger) is judged against the champion on the same examples: the current
dataset's validation split (never the test set, which only reports), which both models score,
the champion loaded through the safe loader (tracking/models.py). The test is McNemar's exact
one-sided test on per-example correctness (core/metrics.py): the two models are scored on the
same examples, so only the examples where exactly one of them is right say which is better, and
the exact binomial test on those needs no resampling (a bootstrap would), so a decision is the
same every time it is made. `registry.promote` is the rule:

- `significant`: the alias moves when the test finds the challenger better at `registry.alpha`;
- `best`: when the challenger is right on more of the examples, however few;
- `never`: versions are registered, the alias never moves.

There is no champion yet: the challenger becomes it. The champion cannot be scored on these
examples (its images are another size, its classes are others, or its model file fails its
check): it cannot keep the alias, and the challenger takes it with the reason in its decision.
Each version's `promotion.*` tags hold the evidence and the decision.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np

from pipeline.core import names
from pipeline.core.config import RegistryConfig
from pipeline.core.errors import PipelineError
from pipeline.core.shards import Shards, scale
from pipeline.tracking.runs import set_tags

SETTLE_SECONDS = 0.2  # after moving the alias, before reading it back


@dataclass(frozen=True)
class Examples:
    """What a challenger is judged on: the examples' labels and digest, the challenger's
    predicted labels for them, and `score`, which gives the labels another registered model
    (a `models:/NAME/VERSION` URI) predicts for them, or raises a `PipelineError` saying why it
    cannot. `keys` identify the examples (`example_keys`), `trained_on` those the challenger
    trained on: a champion is judged only on examples it did not train on (another seed draws
    another validation split, and a folder dataset moves pictures between splits)."""

    labels: np.ndarray
    sha256: str
    predicted: np.ndarray
    score: Callable[[str], np.ndarray]
    keys: np.ndarray
    trained_on: np.ndarray


def example_keys(x: np.ndarray | Shards, limit: int | None = None) -> np.ndarray:
    """An 8-byte key per example (BLAKE2b of its float32 pixels in 0-1): equal for the same
    picture. `x`: images, or a prepared split read a chunk at a time (its first `limit`)."""
    chunks = (scale(i) for i, _ in x.batches(None, limit)) if isinstance(x, Shards) else [x]
    keys = []
    for chunk in chunks:
        rows = np.ascontiguousarray(chunk).reshape(len(chunk), -1)
        keys += [hashlib.blake2b(row.tobytes(), digest_size=8).digest() for row in rows]
    return np.frombuffer(b"".join(keys), dtype=np.uint64) if keys else np.zeros(0, np.uint64)


def keep_training_keys(run_id: str, keys: np.ndarray) -> None:
    """Log the keys of the examples the run's model trained on (`TRAINED_ON_ARTIFACT`), so that
    a later challenger judges it only on examples it never saw."""
    import tempfile
    from pathlib import Path

    from pipeline.tracking import runs

    with tempfile.TemporaryDirectory(prefix="trained-on-") as tmp:
        path = Path(tmp) / names.TRAINED_ON_ARTIFACT
        np.save(path, np.unique(keys))
        runs.log_artifact(run_id, path)


def training_keys(run_id: str | None) -> np.ndarray | None:
    """The keys of the examples `run_id`'s model trained on, checked (a plain uint64 array, no
    pickle); None where the run kept none (registered before they were kept)."""
    import tempfile

    if not run_id:
        return None
    with tempfile.TemporaryDirectory(prefix="trained-on-") as tmp:
        try:
            got = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=names.TRAINED_ON_ARTIFACT, dst_path=tmp
            )
        except (mlflow.exceptions.MlflowException, OSError):
            return None
        try:
            keys = np.load(got, allow_pickle=False)
        except ValueError as exc:
            raise PipelineError(f"run {run_id}'s {names.TRAINED_ON_ARTIFACT}: {exc}") from None
    if keys.dtype != np.uint64 or keys.ndim != 1:
        raise PipelineError(
            f"run {run_id}'s {names.TRAINED_ON_ARTIFACT} holds {keys.dtype} {keys.shape}, not "
            "the uint64 keys this project writes."
        )
    return keys


def examples_sha256(x: np.ndarray | Shards, y: np.ndarray | None = None) -> str:
    """The digest of examples' images and labels: `x` and `y`, or a prepared split `x` read a
    chunk at a time. Equal only for the same examples."""
    chunks = x.batches() if isinstance(x, Shards) else [(x, y)]
    pictures, labels = hashlib.sha256(), hashlib.sha256()
    for images, targets in chunks:
        pictures.update(np.ascontiguousarray(images).tobytes())
        labels.update(np.ascontiguousarray(targets).tobytes())
    return hashlib.sha256(pictures.digest() + labels.digest()).hexdigest()


def register(
    run_id: str, model_uri: str, name: str, rule: RegistryConfig, examples: Examples
) -> tuple[str, bool]:
    """Register the model as a new version of `name`, judge it against the champion
    (`judge`) and return the version and whether it is the champion. The run records both
    (`registered_version`, `champion` tags)."""
    client = mlflow.MlflowClient()
    try:  # the client, unlike mlflow.register_model, prints nothing
        client.create_registered_model(name)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    model_id = model_uri.removeprefix("models:/")
    source = client.get_logged_model(model_id).artifact_location
    keep_training_keys(run_id, examples.trained_on)
    created = client.create_model_version(name, source, run_id=run_id, model_id=model_id)
    version = str(created.version)
    promoted = judge(name, version, rule, examples)
    set_tags(
        run_id,
        {names.REGISTERED_TAG: f"{name}/{version}", names.CHAMPION_TAG: str(promoted).lower()},
    )
    return version, promoted


def decision(name: str, version: str) -> str:
    """What was decided for `version` of `name`, with its p-value where a test was made."""
    tags = mlflow.MlflowClient().get_model_version(name, version).tags
    said = tags.get(names.PROMOTION_DECISION, "not judged")
    p = tags.get(names.PROMOTION_P_VALUE)
    return f"{said} (p = {p})" if p is not None else said


def champion(name: str) -> str | None:
    """The version of `name` with the `champion` alias, if any."""
    try:
        found = mlflow.MlflowClient().get_model_version_by_alias(name, names.CHAMPION)
    except mlflow.exceptions.MlflowException:
        return None
    return str(found.version)


def judge(
    name: str, version: str, rule: RegistryConfig, examples: Examples, rounds: int = 20
) -> bool:
    """Decide whether `version` of `name` takes the `champion` alias (see the module), record
    the evidence and decision in its tags, and move the alias if so. Returns whether it is the
    champion.

    There is no compare-and-set in the registry: the alias is read again before and after it
    moves. A champion that changed while this version was judged is judged against in turn, so
    of two evaluations finishing at once each records its decision and one champion remains.
    """
    client = mlflow.MlflowClient()
    for _ in range(rounds):
        current = champion(name)
        if current == version:
            return True
        evidence, promote = decide(name, current, rule, examples)
        for key, value in evidence.items():
            client.set_model_version_tag(name, version, key, str(value))
        if not promote:
            return False
        if champion(name) != current:
            continue  # moved meanwhile: judge against the new champion
        try:
            client.set_registered_model_alias(name, names.CHAMPION, version)
        except mlflow.exceptions.MlflowException:
            # Two first champions at once: the store refuses the second alias it creates
            # (a UNIQUE constraint). Judged against the one that landed; any other error stands.
            if champion(name) != current:
                continue
            raise
        time.sleep(SETTLE_SECONDS)  # another move decided before this one lands meanwhile
        if champion(name) == version:
            return True
    return champion(name) == version


def decide(
    name: str, current: str | None, rule: RegistryConfig, examples: Examples
) -> tuple[dict[str, Any], bool]:
    """The evidence for the challenger against champion `current` (None: there is none), and
    whether the challenger takes the alias."""
    from pipeline.core.metrics import mcnemar_greater

    right = examples.predicted == examples.labels
    evidence: dict[str, Any] = {
        names.PROMOTION_RULE: f"{rule.promote} (alpha {rule.alpha})",
        names.PROMOTION_EXAMPLES: f"{len(right)} validation examples",
        names.PROMOTION_EXAMPLES_SHA256: examples.sha256,
        names.PROMOTION_ACCURACY: round(float(right.mean()), 6),
    }
    if rule.promote == "never":
        return evidence | {names.PROMOTION_DECISION: "registered only (promote: never)"}, False
    if current is None:
        return evidence | {names.PROMOTION_DECISION: names.FIRST_CHAMPION}, True
    evidence[names.PROMOTION_AGAINST] = current
    try:
        theirs = examples.score(f"models:/{name}/{current}")
        seen = training_keys(mlflow.MlflowClient().get_model_version(name, current).run_id)
    except PipelineError as exc:
        said = f"promoted: champion v{current} cannot be scored on these examples: {exc}"
        return evidence | {names.PROMOTION_DECISION: said[:4000]}, True
    unseen = np.ones(len(right), bool) if seen is None else ~np.isin(examples.keys, seen)
    left_out = "its training examples unknown" if seen is None else (
        f"{int((~unseen).sum())} the champion trained on left out"
    )  # fmt: skip
    evidence[names.PROMOTION_EXAMPLES] = f"{int(unseen.sum())} validation examples ({left_out})"
    if not unseen.any():
        said = f"promoted: champion v{current} trained on every one of these examples"
        return evidence | {names.PROMOTION_DECISION: said}, True
    right, their_right = right[unseen], (theirs == examples.labels)[unseen]
    evidence[names.PROMOTION_ACCURACY] = round(float(right.mean()), 6)
    only_this, only_champion, p = mcnemar_greater(right, their_right)
    better = p < rule.alpha if rule.promote == "significant" else right.sum() > their_right.sum()
    evidence |= {
        names.PROMOTION_CHAMPION_ACCURACY: round(float(their_right.mean()), 6),
        names.PROMOTION_ONLY_THIS: only_this,
        names.PROMOTION_ONLY_CHAMPION: only_champion,
        names.PROMOTION_P_VALUE: f"{p:.4g}",
        names.PROMOTION_DECISION: names.PROMOTED if better else f"kept champion v{current}",
    }
    return evidence, better
