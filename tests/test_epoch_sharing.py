"""Epoch counts for the price of the longest (pipeline/sweeps/plan.py, job.py): the k-epoch model
taken from a longer training is, bit for bit, the model of k epochs alone (the seed MLP and the
CNN, in memory and streamed); a real sweep over two epoch counts makes both runs from one
training, complete and the same as an unshared sweep's, under the basic and the joblib launcher;
a checkpoint-made run reproduces bit for bit; a training that fails at epoch 2 still makes epoch
1's run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from helpers import (
    ROOT,
    assert_complete_child,
    run_env,
    started_until,
    sweep_in,
    sweep_runs_in,
)

pytestmark = pytest.mark.slow  # real training on real MNIST

ALONE_AND_TAKEN = """
import json, sys
from pathlib import Path
from pipeline.core.config import compose, validate
from pipeline.core.model import weights_sha256
from pipeline.core.training import EpochSnapshots, Trainer, set_determinism, training_data
model, memory = sys.argv[1], sys.argv[2]
overrides = [f"model={model}", f"train.in_memory_mb={memory}", "train.batch_size=64"]
cfg = validate(compose(overrides))
root = Path.cwd()

def fit(epochs, taken=()):
    train_cfg = cfg.train.model_copy(update={"epochs": epochs})
    set_determinism(cfg.seed, train_cfg.intra_op_threads, train_cfg.inter_op_threads)
    data = (training_data(root, "train", train_cfg, 2000), training_data(root, "val", train_cfg))
    trainer = Trainer()
    net = trainer.new_model(cfg.model, train_cfg, 10, (28, 28, 1))
    snapshots = EpochSnapshots(taken)
    trainer.fit(net, *data, train_cfg, [snapshots])
    kept = trainer.detach(net, cfg.model, train_cfg)
    return weights_sha256(net), {k: weights_sha256(kept.with_arrays(a).model())
                                 for k, a in snapshots.taken.items()}

alone_2, _ = fit(2)
alone_1, _ = fit(1)
longest, taken = fit(3, (1, 2))
print(json.dumps({"alone": {1: alone_1, 2: alone_2}, "taken": taken, "longest": longest}))
"""


@pytest.mark.parametrize(
    ("model", "memory"), [("mlp", 1024), ("cnn", 1024), ("mlp", 0)], ids=["mlp", "cnn", "streamed"]
)
def test_a_checkpoint_is_the_model_of_that_many_epochs_alone(
    prepared: Path, model: str, memory: int
) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", ALONE_AND_TAKEN, model, str(memory)],
        cwd=prepared, env=run_env(PYTHONPATH=str(ROOT)), capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["taken"] == got["alone"], got  # weights_sha256, epoch by epoch
    assert got["longest"] not in got["alone"].values()


def digests(project: Path, experiment: str) -> dict[tuple[str, str], str]:
    """(hidden units, epochs) -> weights_sha256 of a sweep's runs."""
    _, children = sweep_runs_in(project, experiment)
    return {
        (r.data.params["model.hidden_units"], r.data.params["train.epochs"]): r.data.tags[
            "weights_sha256"
        ]
        for r in children
    }


QUICK = ["model.hidden_units=16,24", "train.epochs=1,2"]  # and 1,000 digits (sweep_in)


def test_a_sweep_over_epoch_counts_trains_each_configuration_once(prepared: Path) -> None:
    """2 hidden sizes x 2 epoch counts: 2 trainings make 4 complete runs; each 1-epoch run is
    tagged with the 2-epoch run that trained it, and has the same weights as in a sweep that
    trains every epoch count alone, under the basic and the joblib launcher."""
    shared = sweep_in(prepared, "shared", *QUICK)
    assert "4 configurations from 2 trainings (4 epochs, not 6)" in shared.stderr, shared.stderr
    (parent,), children = sweep_runs_in(prepared, "shared")
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    by_name = {c.info.run_name: c for c in children}
    for child in children:
        epochs = int(child.data.params["train.epochs"])
        assert_complete_child(child, parent.info.run_id, epochs=epochs)
        assert child.data.params["sweep.also_epochs"] == "None"  # as trained alone
        if epochs == 1:
            longer = mlflow.get_run(child.data.tags["trained_in"])
            assert longer.data.params["train.epochs"] == "2"
            assert (
                longer.data.params["model.hidden_units"] == child.data.params["model.hidden_units"]
            )
            assert child.info.run_name.replace("-e1-", "-e2-") in by_name
    newest = max(prepared.glob("multirun/*/*/summary.csv"), key=lambda p: p.stat().st_mtime)
    summary = newest.read_text().splitlines()
    assert len(summary) == 1 + 4, summary  # a row per configuration

    alone = sweep_in(prepared, "alone", *QUICK, "sweep.share_epochs=false")
    assert "each of the 4 configurations trains alone (sweep.share_epochs=false)" in alone.stderr
    joblib = sweep_in(prepared, "joblib", *QUICK, "hydra/launcher=joblib",
                      "hydra.launcher.n_jobs=2")  # fmt: skip
    assert "from 2 trainings" in joblib.stderr
    want = digests(prepared, "alone")
    assert len(want) == 4
    assert digests(prepared, "shared") == want
    assert digests(prepared, "joblib") == want


def test_a_checkpoint_made_run_reproduces_bit_for_bit(prepared: Path) -> None:
    sweep_in(prepared, "reproduced", "model.hidden_units=16", "train.epochs=1,2")
    _, children = sweep_runs_in(prepared, "reproduced")
    (checkpoint,) = [c for c in children if c.data.params["train.epochs"] == "1"]
    assert "trained_in" in checkpoint.data.tags
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.reproduce", checkpoint.info.run_id, "--current-env"],
        cwd=prepared, env=run_env(MLFLOW_TRACKING_URI=f"sqlite:///{prepared}/mlflow.db"),
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "reproduced: bit for bit." in proc.stdout, proc.stdout


def test_a_training_that_fails_at_epoch_2_finishes_epoch_1s_run_and_fails_the_rest(
    prepared: Path,
) -> None:
    """A sweep over epochs 1, 2, 3 trains once, streaming its data from the shards each epoch;
    once epoch 1 has ended, a training shard is cut in half, so epoch 2 fails reading it. The
    1-epoch run is complete and FINISHED; the 2-epoch run FAILED, naming the training's run and
    its reason; the training's own (3-epoch) run FAILED with that reason; nothing RUNNING."""
    from pipeline.core.shards import Shards

    shard = Shards(prepared / "data" / "processed", "train").files()[0]
    whole = shard.read_bytes()
    sweep = ["python", "-m", "pipeline.sweep", "-m", "model.hidden_units=16",
             "train.epochs=1,2,3", "train.in_memory_mb=0", "train.max_examples=null",
             "tracking.experiment_name=cut"]  # fmt: skip
    try:
        proc, _ = started_until(sweep, prepared, "Epoch 1/3", stderr=subprocess.PIPE)
        with shard.open("r+b") as fh:
            fh.truncate(len(whole) // 2 + 3)  # not a whole number of records
        out, err = proc.communicate(timeout=600)
    finally:
        shard.write_bytes(whole)
    assert proc.returncode == 1, out[-2000:] + err[-2000:]
    (parent,), children = sweep_runs_in(prepared, "cut")
    runs = {int(re.search(r"-e(\d+)-", c.info.run_name)[1]): c for c in children}
    assert sorted(runs) == [1, 2, 3] and "RUNNING" not in {c.info.status for c in children}
    trained = runs[3]
    assert trained.info.status == "FAILED"
    assert_complete_child(runs[1], parent.info.run_id, epochs=1, examples=None)
    assert runs[1].data.tags["trained_in"] == trained.info.run_id
    assert runs[2].info.status == "FAILED" and runs[2].data.params["train.epochs"] == "2"
    said = runs[2].data.tags["failure_reason"]
    assert f"its training (run {trained.info.run_id}) stopped before epoch 2" in said, said
    assert trained.data.tags["failure_reason"], trained.data.tags  # the training's own reason
    print(f"2-epoch run: {said}\ntraining run: {trained.data.tags['failure_reason']}")
