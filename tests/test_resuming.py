"""A sweep job's checkpoints kept in its run (pipeline/sweeps/resuming.py), on a real MLflow
store: each epoch's state lands in the run, a retry takes it back as the stage's are checked,
a tampered one is not used, the lost attempt is told from a live one, and the finished run keeps
none."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest

from helpers import use_store
from pipeline.core.resume import CHECKPOINT, Checkpoints
from pipeline.sweeps.resuming import ARTIFACTS, RunCheckpoints, fetch, lost_attempt

KEY = {"code": "c" * 64, "config": "f" * 64, "data": "d" * 64}


@pytest.fixture
def client(tmp_path: Path) -> mlflow.MlflowClient:
    use_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return mlflow.MlflowClient()


def tiny_model():
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def kept(client: mlflow.MlflowClient, run_id: str) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, ARTIFACTS)}


def test_each_epochs_checkpoint_lands_in_the_run_and_a_retry_takes_it_back_checked(
    client: mlflow.MlflowClient, tmp_path: Path
) -> None:
    experiment = client.create_experiment("resuming")
    lost = client.create_run(experiment).info.run_id
    model = tiny_model()
    saving = RunCheckpoints(tmp_path / "lost", KEY, lost)
    for epoch in (1, 2):
        saving.save(epoch, model, {"loss": [0.5, 0.4][:epoch]})
    # the last epoch's arrays and the checkpoint.json naming them; the first epoch's are gone
    assert kept(client, lost) == {f"{ARTIFACTS}/state-00002.npz", f"{ARTIFACTS}/{CHECKPOINT}"}

    assert fetch(lost, tmp_path / "retry") == 2
    retry = Checkpoints(tmp_path / "retry", KEY)
    assert retry.refusal() is None
    other = Checkpoints(tmp_path / "retry", {**KEY, "config": "0" * 64})
    assert other.refusal().startswith("it was made with other config")
    fresh = tiny_model()
    resumed = retry.restore(fresh, epochs=5)
    assert (resumed.epoch, resumed.run_id, resumed.history) == (2, lost, {"loss": [0.5, 0.4]})
    for a, b in zip(fresh.variables, model.variables, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))

    saving.clear()  # the model is trained: the run keeps no checkpoint
    assert kept(client, lost) == set()
    assert not (tmp_path / "lost").exists()


def test_a_checkpoint_naming_a_file_outside_its_folder_is_not_taken(
    client: mlflow.MlflowClient, tmp_path: Path
) -> None:
    run_id = client.create_run(client.create_experiment("tampered")).info.run_id
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / CHECKPOINT).write_text(json.dumps({"epoch": 3, "file": "../../etc/passwd"}))
    (bad / "state-00003.npz").write_bytes(b"not arrays")
    for name in ("state-00003.npz", CHECKPOINT):
        client.log_artifact(run_id, str(bad / name), ARTIFACTS)
    assert fetch(run_id, tmp_path / "retry") is None
    assert not (tmp_path / "retry").exists()
    assert fetch(client.create_run("0").info.run_id, tmp_path / "none") is None  # none kept


def test_the_lost_attempt_is_the_same_models_run_left_running_by_the_same_task_or_job(
    client: mlflow.MlflowClient,
) -> None:
    experiment = client.create_experiment("attempts")
    parent = client.create_run(experiment).info.run_id

    def child(name: str, key: str, value: str) -> str:
        tags = {"mlflow.parentRunId": parent, key: value}
        return client.create_run(experiment, tags=tags, run_name=name).info.run_id

    for key in ("slurm.job_id", "ray.task_id"):
        first = child("mlp-h8-e3-s42", key, "7_1")
        child("mlp-h16-e3-s42", key, "7_1")  # another model of the job
        child("mlp-h8-e3-s42", key, "8_1")  # another job's (or task's)
        finished = child("mlp-h8-e3-s42", key, "7_1")
        client.set_terminated(finished)  # not lost: it ended
        again = child("mlp-h8-e3-s42", key, "7_1")  # the next attempt
        assert lost_attempt(again, {key: "7_1"}) == first
        assert lost_attempt(first, {key: "7_2"}) is None
        assert lost_attempt(again, {}) is None  # a launcher that never runs a job again
        for run_id in (first, again):
            client.set_terminated(run_id, "KILLED")
