"""A sweep job's training resumes where a lost attempt of it stopped.

On a launcher that runs a job again when its process dies (Ray's task retries, a SLURM requeue),
each training keeps its checkpoints (core/resume.py) in its run as well as on its node: after
every epoch its arrays go to the run's `resume/state-<epoch>.npz`, then `resume/checkpoint.json`
that names them, then the arrays before are removed: the run always holds a whole checkpoint.
The job's next attempt, on another node, finds the run its lost attempt left RUNNING (same
sweep, same name, and the same Ray task or SLURM job), takes that checkpoint and goes on from
its epoch, in a run of its own tagged `resumed_from` and `resumed_at_epoch`; the lost run ends
KILLED saying so. The checkpoint is checked as the stage's are (its key, digest,
size and the model's shapes) and read without pickle. A training that makes the models of
smaller epoch counts on its way (plan.py) resumes only from before the first of them, since
their weights are taken on the way. Once the model is trained, the run's `resume/` is removed.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.core import names
from pipeline.core.resume import CHECKPOINT, MAX_JSON, Checkpoints

ARTIFACTS = "resume"  # the run's artifact folder of its latest checkpoint
ATTEMPT_TAGS = (names.RAY_TASK_TAG, names.SLURM_JOB_TAG)  # what every attempt of a job shares


class RunCheckpoints(Checkpoints):
    """A job's checkpoints: on its node, and each also in its run (`ARTIFACTS`)."""

    _kept: str | None = None  # the arrays' file of the checkpoint the run holds

    def save(self, epoch: int, model: Any, history: dict[str, list[float]]) -> str:
        name = super().save(epoch, model, history)
        from pipeline.tracking import runs

        try:  # the arrays first: a checkpoint.json in the run names arrays already there
            runs.log_artifact(str(self.run_id), self.folder / name, ARTIFACTS)
            runs.log_artifact(str(self.run_id), self.folder / CHECKPOINT, ARTIFACTS)
        except Exception as exc:  # the training goes on; a retry finds the one before
            print(f"sweep: the checkpoint of epoch {epoch} was not kept in run {self.run_id} "
                  f"({type(exc).__name__}: {exc})", file=sys.stderr)  # fmt: skip
            return name
        before, self._kept = self._kept, name
        if before is not None:
            self._delete(f"{ARTIFACTS}/{before}")
        return name

    def clear(self) -> None:
        super().clear()
        self._delete(ARTIFACTS)

    def _delete(self, path: str) -> None:
        """Remove `path` from the run's artifacts, if its store lets us: they are a few MB
        that nothing reads again."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        from pipeline.tracking import runs

        try:
            run = runs.get_run(str(self.run_id), "it is the job's own.")
            get_artifact_repository(run.info.artifact_uri).delete_artifacts(path)
        except Exception:
            pass


def job_checkpoints(
    config: Any, root: Path, out: Path, run_id: str, tags: Mapping[str, str], also: Sequence[int]
) -> RunCheckpoints | None:
    """The checkpoints of a job's training in run `run_id` on a launcher that retries (its
    `tags` name a Ray node or a SLURM job; None elsewhere), holding its lost attempt's latest
    checkpoint when there is one it can use."""
    from pipeline.tracking import experiment

    if not any(key in tags for key in ATTEMPT_TAGS):
        return None
    checkpoints = RunCheckpoints(out / "resume", experiment.training_key(config, root), run_id)
    Checkpoints.clear(checkpoints)  # this node's, from an attempt before: the run's is newer
    lost = lost_attempt(run_id, tags)
    if lost is not None:
        epoch = fetch(lost, checkpoints.folder)
        if epoch is not None and also and min(also) <= epoch:
            print(
                f"sweep: run {lost}'s checkpoint at epoch {epoch} is not used: the models of "
                f"epochs {sorted(also)} are taken on the way there; training starts over.",
                file=sys.stderr,
            )
            Checkpoints.clear(checkpoints)
    return checkpoints


def lost_attempt(run_id: str, tags: Mapping[str, str]) -> str | None:
    """The newest run of an earlier attempt of this model that was lost: of the same sweep and
    name, left RUNNING, by the same Ray task (Ray's retries keep its id) or SLURM job (a
    requeued job keeps its id)."""
    import mlflow

    attempt = next(((key, tags[key]) for key in ATTEMPT_TAGS if key in tags), None)
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    parent = run.data.tags.get(names.PARENT_TAG)
    if attempt is None or not parent:
        return None
    found = client.search_runs(
        [run.info.experiment_id],
        f"tags.`{names.PARENT_TAG}` = '{parent}' and attributes.run_name = "
        f"'{run.info.run_name}' and attributes.status = 'RUNNING' and "
        f"tags.`{attempt[0]}` = '{attempt[1]}'",
        order_by=["attributes.start_time DESC"],
    )
    return next((r.info.run_id for r in found if r.info.run_id != run_id), None)


def fetch(run_id: str, folder: Path) -> int | None:
    """Run `run_id`'s checkpoint into `folder` as core/resume.py reads it; its epoch, or None
    when the run holds none (its first epoch had not ended)."""
    from mlflow.artifacts import download_artifacts

    def download(name: str, tmp: str) -> Path:
        return Path(download_artifacts(run_id=run_id, artifact_path=f"{ARTIFACTS}/{name}",
                                       dst_path=tmp))  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        try:
            meta_file = download(CHECKPOINT, tmp)
            if meta_file.stat().st_size > MAX_JSON:
                raise ValueError(f"{CHECKPOINT} of {meta_file.stat().st_size} bytes")
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            name, epoch = str(meta["file"]), int(meta["epoch"])
            if "/" in name or not name.startswith("state-"):
                raise ValueError(f"{CHECKPOINT} names the file {name!r}")
            state = download(name, tmp)
        except Exception as exc:  # none yet (no epoch had ended), or not one of ours
            if "RESOURCE_DOES_NOT_EXIST" not in str(exc) and "404" not in str(exc):
                print(f"sweep: run {run_id}'s checkpoint is not used: {exc}", file=sys.stderr)
            return None
        folder.mkdir(parents=True, exist_ok=True)
        shutil.move(state, folder / name)  # checked against its digest before use
        shutil.move(meta_file, folder / CHECKPOINT)
    return epoch
