"""Sweeps end to end on real MNIST (small: 1-2 epochs, 1,000 training digits per job): launchers,
seeds and summaries, failures and interrupts. (DVC's queue and the parity with `dvc exp run`:
test_sweep_dvc.py; the Optuna search: test_search.py.)"""

import csv
import json
import re
import signal
import sys
from pathlib import Path

import mlflow
import pytest

from helpers import (
    QUICK_SWEEP,
    assert_complete_child,
    parent_artifacts,
    run,
    started_until,
    sweep_in,
    sweep_runs_in,
)
from pipeline.core.names import TRAINED_IN_TAG
from pipeline.sweeps.stats import holm

pytestmark = pytest.mark.slow  # real sweeps: several processes, training on MNIST


def test_parallel_sweep_with_joblib_on_a_new_store(prepared: Path) -> None:
    proc = sweep_in(
        prepared,
        "joblib",
        "model.hidden_units=16,32",
        "train.epochs=1,2",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
    )
    assert "4 runs, 4 configurations, best first" in proc.stdout
    (parent,), children = sweep_runs_in(prepared, "joblib")
    assert parent.info.status == "FINISHED" and len(children) == 4
    first, second = sorted(children, key=lambda c: c.info.start_time)[:2]
    assert second.info.start_time < first.info.end_time, "the two workers did not overlap"
    assert sorted(c.info.run_name for c in children) == [
        "mlp-h16-e1-n1000-s42",
        "mlp-h16-e2-n1000-s42",
        "mlp-h32-e1-n1000-s42",
        "mlp-h32-e2-n1000-s42",
    ]
    for child in children:
        assert_complete_child(child, parent.info.run_id, int(child.data.params["train.epochs"]))


def download(run_id: str, path: str, prepared: Path) -> Path:
    return Path(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=path, dst_path=str(prepared / "dl" / run_id)
        )
    )


def test_seeds_replicate_every_configuration_and_the_summary_aggregates_them(
    prepared: Path,
) -> None:
    """A 2 x 2 grid with sweep.seeds=2 on 1,000 training digits: 8 models, 4 configurations,
    from 4 trainings (each 1-epoch model is its 2-epoch training's checkpoint)."""
    grid = ["model.hidden_units=16,32", "train.epochs=1,2", "sweep.seeds=2"]
    proc = sweep_in(prepared, "seeds", *grid, "tracking.registered_model=seeds-digits")
    assert "8 runs, 4 configurations, best first" in proc.stdout
    printed = proc.stdout + proc.stderr
    noise = re.findall(r"^[IWEF]\d{4} |absl|━|INFO mlflow|Registered model", printed, re.M)
    assert not noise and printed.count("\nEpoch 1/") + printed.startswith("Epoch 1/") == 4
    (parent,), children = sweep_runs_in(prepared, "seeds")
    names = sorted(c.info.run_name for c in children)
    assert names == sorted(
        f"mlp-h{h}-e{e}-n1000-s{s}" for h in (16, 32) for e in (1, 2) for s in (42, 43)
    )
    by_name = {c.info.run_name: c for c in children}
    for child in children:
        assert_complete_child(child, parent.info.run_id, int(child.data.params["train.epochs"]))
        if child.data.params["train.epochs"] == "1":
            longer = by_name[child.info.run_name.replace("-e1-", "-e2-")]
            assert child.data.tags[TRAINED_IN_TAG] == longer.info.run_id
        else:
            assert TRAINED_IN_TAG not in child.data.tags
    assert parent_artifacts(parent) >= {
        "summary.csv",
        "runs.csv",
        "summary.json",
        "figures/accuracy_by_hidden_units.png",
        "figures/accuracy_heatmap.png",
        "figures/accuracy_vs_seconds.png",
    }
    assert parent.data.metrics["jobs"] == 2 and parent.data.metrics["models"] == 8  # 2 trainings
    rows = list(csv.DictReader(download(parent.info.run_id, "summary.csv", prepared).open()))
    assert len(rows) == 4 and all(r["n"] == "2" for r in rows)
    means = [float(r["val_accuracy_mean"]) for r in rows]
    assert means == sorted(means, reverse=True)  # ranked on validation, not on test
    for row in rows:
        seeds = [c for c in children if c.data.tags["sweep_overrides"].startswith(row["config"])]
        assert len(seeds) == 2, (row["config"], [c.data.tags["sweep_overrides"] for c in children])
        val = [c.data.metrics["val_accuracy"] for c in seeds]
        test = [c.data.metrics["test_accuracy"] for c in seeds]
        assert float(row["val_accuracy_mean"]) == pytest.approx(sum(val) / 2)
        assert float(row["test_accuracy_mean"]) == pytest.approx(sum(test) / 2)
        assert 0 <= float(row["val_accuracy_ci95"]) < 1 and float(row["test_accuracy_std"]) >= 0
        assert row["vs_best_welch_holm"] in (
            "cannot be told apart from the best",
            "worse than the best",
        ) or (row is rows[0] and row["vs_best_welch_holm"] == "best")
        assert row["fewer_seeds"] == "False"
        # Figures: drawn for the configuration's median seed, on demand for the other.
        drawn = [c for c in seeds if c.data.tags["figures"] == "drawn"]
        assert drawn == [min(seeds, key=lambda c: c.data.metrics["val_accuracy"])]
    assert rows[0]["vs_best_welch_holm"] == "best" and rows[0]["p_vs_best"] == "nan"
    raw = [float(r["p_vs_best"]) for r in rows[1:]]
    assert [float(r["p_vs_best_holm"]) for r in rows[1:]] == pytest.approx(holm(raw))
    assert parent.data.metrics["best_val_accuracy_mean"] == pytest.approx(means[0])
    assert parent.data.tags["best_config"] == rows[0]["config"]
    per_model = list(csv.DictReader(download(parent.info.run_id, "runs.csv", prepared).open()))
    assert len(per_model) == 8
    # One registry version per sweep: the best configuration's median seed.
    versions = mlflow.MlflowClient().search_model_versions("name = 'seeds-digits'")
    assert len(versions) == 1
    best = [c for c in children if c.data.tags["sweep_overrides"].startswith(rows[0]["config"])]
    assert (
        versions[0].run_id == min(best, key=lambda c: c.data.metrics["val_accuracy"]).info.run_id
    )
    assert parent.data.tags["registered_version"] == "seeds-digits/1"
    assert "val_accuracy" in proc.stdout and " ± " in proc.stdout

    # The others' figures, on demand: drawn from the figure data the run kept, by the web app
    # when a page shows them (not logged: it reads the store) or by `pipeline.runs --figures`.
    on_demand = [c for c in children if c.data.tags["figures"] == "on demand"]
    assert len(on_demand) == 4
    from pipeline.app.server import Runs

    shown = on_demand[1].info.run_id
    figure = Runs(f"sqlite:///{prepared}/mlflow.db").figure(shown, "misclassified.png")
    assert figure.read_bytes().startswith(b"\x89PNG") and figure.stat().st_size > 10_000
    assert mlflow.MlflowClient().get_run(shown).data.tags["figures"] == "on demand"
    later = on_demand[0]
    later_id = later.info.run_id
    drawn = run(["python", "-m", "pipeline.runs", "--figures", later_id], prepared)
    assert f"{later_id}  {later.info.run_name}  figures drawn" in drawn.stdout
    client = mlflow.MlflowClient()
    assert client.get_run(later_id).data.tags["figures"] == "drawn"
    paths = {a.path for a in client.list_artifacts(later_id, "figures")}
    assert {f"figures/{n}" for n in ("confusion_matrix.png", "predictions.png")} <= paths
    again = run(["python", "-m", "pipeline.runs", "--figures", later_id], prepared)
    assert "figures already drawn" in again.stdout
    stage_like = run(["python", "-m", "pipeline.runs", "--figures", parent.info.run_id],
                     prepared, check=False)  # fmt: skip
    assert stage_like.returncode == 1
    assert f"run {parent.info.run_id} has no figures/figure_data.npz" in stage_like.stderr

    board = run(
        [
            "python", "-m", "pipeline.compare", "--experiment", "seeds",
            "--group-by", "model.hidden_units,train.epochs", "--csv", "board.csv",
        ],
        prepared,
    )  # fmt: skip
    first = board.stdout.splitlines()[2]
    top = rows[0]["config"].split()  # e.g. model.hidden_units=32 train.epochs=2
    assert first.startswith(" ".join(sorted(top))) or first.startswith(" ".join(top))
    grouped = list(csv.DictReader((prepared / "board.csv").open()))
    assert [float(r["val_accuracy_mean"]) for r in grouped] == pytest.approx(means)

    # The sweep's own runs.csv, summarised again with no store, gives its summary.csv exactly.
    kept = download(parent.info.run_id, "runs.csv", prepared)
    again = run(
        ["python", "-m", "pipeline.compare", "--runs-csv", str(kept), "--csv", "again.csv"],
        prepared,
        MLFLOW_TRACKING_URI="http://127.0.0.1:9",  # nothing listens there: no store is read
    )
    assert "best" in again.stdout
    summary = download(parent.info.run_id, "summary.csv", prepared).read_text()
    assert (prepared / "again.csv").read_text() == summary


def test_a_bad_value_fails_its_job_before_any_run_and_keeps_the_others(
    prepared: Path,
) -> None:
    proc = sweep_in(prepared, "failing", "model.hidden_units=16,-1", "train.epochs=1", check=False)
    assert proc.returncode == 1
    assert "1 of 2 jobs failed" in proc.stderr
    assert "model.hidden_units=-1" in proc.stderr and "received -1" in proc.stderr
    (parent,), children = sweep_runs_in(prepared, "failing")
    assert {c.info.run_name: c.info.status for c in children} == {
        "mlp-h16-e1-n1000-s42": "FINISHED"
    }
    assert parent.info.status == "FAILED"
    assert parent.data.tags["failure_reason"] == "PipelineError: 1 of 2 jobs failed"
    assert parent.data.metrics["jobs"] == 2 and parent.data.metrics["failed_jobs"] == 1
    assert "summary.csv" in parent_artifacts(parent)


def test_standard_grid_preset() -> None:
    from hydra import compose, initialize_config_dir

    from pipeline.core.config import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["+grid=hidden_epochs"], return_hydra_config=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert dict(cfg.hydra.sweeper.params) == {
        "model.hidden_units": "32,64,128,256,512",
        "train.epochs": "1,3,5,10",
    }
    assert cfg.hydra.callbacks.sweep._target_ == "pipeline.sweeps.callback.SweepCallback"


def test_a_model_whose_evaluation_fails_fails_its_job_and_the_sweep_goes_on(
    prepared: Path,
) -> None:
    # Models are evaluated in the background while the next one trains: a figures folder that
    # cannot be made fails seed 42's evaluation after seed 43 of the job has started.
    sweep_dir = prepared / "multirun" / "evaluation-fails"
    blocked = sweep_dir / "0" / "s42" / "reports" / "figures"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where the figures folder goes\n")
    proc = sweep_in(
        prepared,
        "evaluation-fails",
        "model.hidden_units=16,24",
        "train.epochs=1",
        "sweep.seeds=2",
        f"hydra.sweep.dir={sweep_dir}",
        check=False,
    )
    assert proc.returncode == 1
    assert "1 of 2 jobs failed" in proc.stderr
    assert f"FileExistsError: [Errno 17] File exists: '{blocked}'" in proc.stderr
    (parent,), children = sweep_runs_in(prepared, "evaluation-fails")
    status = {c.info.run_name: c.info.status for c in children}
    assert status == {
        "mlp-h16-e1-n1000-s42": "FAILED",
        "mlp-h16-e1-n1000-s43": "FINISHED",
        "mlp-h24-e1-n1000-s42": "FINISHED",
        "mlp-h24-e1-n1000-s43": "FINISHED",
    }
    (failed,) = [c for c in children if c.info.status == "FAILED"]
    assert failed.data.tags["failure_reason"].startswith("FileExistsError")
    for child in children:
        if child.info.status == "FINISHED":
            assert_complete_child(child, parent.info.run_id, epochs=1)
    job = json.loads((sweep_dir / "0" / "job.json").read_text())
    assert job["status"] == "FAILED" and str(blocked) in job["error"]
    assert json.loads((sweep_dir / "1" / "job.json").read_text())["status"] == "FINISHED"
    assert parent.info.status == "FAILED" and parent.data.metrics["failed_jobs"] == 1


def test_an_interrupted_sweep_finishes_the_model_it_was_evaluating(prepared: Path) -> None:
    # Job 0's model is evaluated in the background while job 1 trains; SIGTERM comes as job 1's
    # first epoch ends, while job 0's figures are still being drawn (SIGINT, Ctrl-C, is handled
    # alike: tests/test_faults.py).
    sweep_dir = prepared / "multirun" / "interrupted"
    cmd = [
        sys.executable,
        "-m",
        "pipeline.sweep",
        "-m",
        "train.epochs=1,500",
        "sweep.share_epochs=false",
    ]
    cmd += ["train.batch_size=8", *QUICK_SWEEP, "tracking.experiment_name=interrupted"]
    cmd += [f"hydra.sweep.dir={sweep_dir}"]
    proc, _ = started_until(cmd, prepared, "Epoch 1/500")
    proc.send_signal(signal.SIGTERM)
    said = proc.stdout.read()
    assert proc.wait(timeout=120) != 0
    (parent,), children = sweep_runs_in(prepared, "interrupted")
    runs = {c.info.run_name: c for c in children}
    assert set(runs) == {"mlp-h128-e1-bs8-n1000-s42", "mlp-h128-e500-bs8-n1000-s42"}
    finished, killed = runs["mlp-h128-e1-bs8-n1000-s42"], runs["mlp-h128-e500-bs8-n1000-s42"]
    assert finished.info.status == "FINISHED", (killed.info.status, said[-3000:])
    assert_complete_child(finished, parent.info.run_id, epochs=1)
    assert finished.info.end_time > killed.info.start_time  # evaluated while job 1 trained
    assert killed.info.status == "KILLED"
    assert killed.data.tags["failure_reason"] == "KeyboardInterrupt: received SIGTERM"
    # What it logged before the signal is kept: its config and the epochs it finished.
    assert killed.data.params["train.epochs"] == "500"
    history = mlflow.MlflowClient().get_metric_history(killed.info.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == list(range(1, len(history) + 1)) != []
    assert json.loads((sweep_dir / "0" / "job.json").read_text())["status"] == "FINISHED"
    assert json.loads((sweep_dir / "1" / "job.json").read_text())["status"] == "FAILED"
    assert parent.info.status in ("FAILED", "KILLED")


def test_a_shared_training_stopped_by_sigterm_keeps_its_finished_checkpoints(
    prepared: Path,
) -> None:
    """Epoch counts 1, 2 and 500 share one training; SIGTERM as its epoch 3 starts: the 1- and
    2-epoch models (checkpoints taken before the signal) are complete FINISHED runs, the
    training's run ends KILLED, no run is RUNNING and none is made for an epoch not reached."""
    cmd = [sys.executable, "-m", "pipeline.sweep", "-m", "train.epochs=1,2,500"]
    cmd += ["train.batch_size=8", *QUICK_SWEEP, "tracking.experiment_name=shared-stop"]
    cmd += [f"hydra.sweep.dir={prepared / 'multirun' / 'shared-stop'}"]
    proc, _ = started_until(cmd, prepared, "Epoch 3/500")
    proc.send_signal(signal.SIGTERM)
    said = proc.stdout.read()
    assert proc.wait(timeout=120) != 0
    (parent,), children = sweep_runs_in(prepared, "shared-stop")
    runs = {c.data.params["train.epochs"]: c for c in children}
    assert sorted(runs, key=int) == ["1", "2", "500"], said[-3000:]
    killed = runs["500"]
    assert killed.info.status == "KILLED"
    assert killed.data.tags["failure_reason"] == "KeyboardInterrupt: received SIGTERM"
    for epochs in (1, 2):
        made = runs[str(epochs)]
        assert made.info.status == "FINISHED", said[-3000:]
        assert made.data.tags[TRAINED_IN_TAG] == killed.info.run_id
        assert_complete_child(made, parent.info.run_id, epochs=epochs)
    assert parent.info.status in ("FAILED", "KILLED")
