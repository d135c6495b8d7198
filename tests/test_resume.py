"""A training that stops resumes where it stopped (core/resume.py): a real train stage on real
MNIST, SIGKILLed after its 4th of 8 epochs, resumes under `dvc repro` from epoch 4 and ends with
the weights of a training never stopped; a checkpoint of another configuration is refused by
name and training starts over; a tampered checkpoint is refused by its digest."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from helpers import run, started_until, use_store

pytestmark = pytest.mark.slow  # real training on real MNIST

EPOCHS, KILLED_AFTER = 8, 4


def set_train(root: Path, **values: object) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def stage_run(root: Path):
    return mlflow.get_run(json.loads((root / "models/run.json").read_text())["run_id"])


def killed_after(root: Path, epoch: int) -> None:
    """`dvc repro train` started and SIGKILLed (DVC and the stage, all at once) as the stage
    prints the end of `epoch`: its checkpoint of that epoch is written by then."""
    dvc = [sys.executable, "-m", "dvc", "repro", "--force", "--single-item", "train"]
    proc, _ = started_until(dvc, root, f"Epoch {epoch}/", new_session=True)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def test_a_train_stage_killed_mid_training_resumes_to_the_same_weights(prepared: Path) -> None:
    root = prepared
    use_store(f"sqlite:///{root}/mlflow.db")
    set_train(root, epochs=EPOCHS, max_examples=6000)
    run(["python", "-m", "dvc", "repro", "train"], root)
    whole = stage_run(root)
    assert not (root / "models/resume").exists()  # removed once the model is saved

    killed_after(root, KILLED_AFTER)
    checkpoint = json.loads((root / "models/resume/checkpoint.json").read_text())
    assert checkpoint["epoch"] == KILLED_AFTER
    proc = run(["python", "-m", "dvc", "repro", "train"], root)
    assert f"train: resuming from epoch {KILLED_AFTER}" in proc.stdout + proc.stderr
    assert f"Epoch {KILLED_AFTER + 1}/{EPOCHS}" in proc.stdout
    assert f"Epoch {KILLED_AFTER}/{EPOCHS}" not in proc.stdout  # not trained again
    resumed = stage_run(root)
    assert resumed.info.run_id != whole.info.run_id
    assert resumed.data.tags["weights_sha256"] == whole.data.tags["weights_sha256"]
    assert resumed.data.tags["resumed_from"] == checkpoint["run_id"]
    assert resumed.data.tags["resumed_at_epoch"] == str(KILLED_AFTER)
    history = mlflow.MlflowClient().get_metric_history(resumed.info.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))
    assert resumed.data.metrics["val_accuracy"] == whole.data.metrics["val_accuracy"]
    killed = mlflow.get_run(checkpoint["run_id"])  # the run whose process was killed
    assert killed.info.status == "KILLED"
    assert resumed.info.run_id in killed.data.tags["failure_reason"]
    assert not (root / "models/resume").exists()


def test_a_checkpoint_of_other_settings_or_tampered_is_refused_and_training_starts_over(
    prepared: Path,
) -> None:
    root = prepared
    use_store(f"sqlite:///{root}/mlflow.db")
    set_train(root, epochs=3, max_examples=2000)
    killed_after(root, 1)
    set_train(root, learning_rate=0.002)  # another configuration
    proc = run(["python", "-m", "dvc", "repro", "train"], root)
    said = proc.stdout + proc.stderr
    assert "is not used: it was made with other config" in said and "resuming" not in said
    assert "Epoch 1/3" in proc.stdout and "training starts over" in said

    killed_after(root, 1)
    state = (
        root
        / "models/resume"
        / json.loads((root / "models/resume/checkpoint.json").read_text())["file"]
    )
    data = bytearray(state.read_bytes())
    data[-100] ^= 0xFF
    state.write_bytes(bytes(data))
    proc = run(["python", "-m", "dvc", "repro", "train"], root)
    said = proc.stdout + proc.stderr
    assert "does not match its SHA-256" in said and "Epoch 1/3" in proc.stdout
