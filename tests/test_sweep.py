"""Sweeps end to end on real MNIST (small: 1-2 epochs, 1,000 training digits per job)."""

import csv
import json
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from helpers import assert_complete_child, copy_project, run, started_until, sweep_runs
from pipeline.sweeps.stats import holm

pytestmark = pytest.mark.slow  # real sweeps: several processes, training on MNIST

QUICK = ["train.max_examples=1000"]


def sweep(project: Path, experiment: str, *overrides: str, check: bool = True):
    args = [
        "python",
        "-m",
        "pipeline.sweep",
        "-m",
        *overrides,
        *QUICK,
        f"tracking.experiment_name={experiment}",
    ]
    return run(args, project, check=check)


def runs_of(project: Path, experiment: str) -> tuple[list, list]:
    """(parent runs, child runs) of `experiment` in the project's store."""
    return sweep_runs(f"sqlite:///{project}/mlflow.db", experiment)


def parent_artifacts(parent) -> set[str]:
    client = mlflow.MlflowClient()
    top = {a.path for a in client.list_artifacts(parent.info.run_id)}
    return top | {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = copy_project(tmp_path_factory.mktemp("sweep"))
    run(["dvc", "repro", "preprocess"], root)
    assert not (root / "mlflow.db").exists()
    yield root


def test_parallel_sweep_with_joblib_on_a_new_store(project: Path) -> None:
    proc = sweep(
        project,
        "joblib",
        "model.hidden_units=16,32",
        "train.epochs=1,2",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
    )
    assert "4 runs, 4 configurations, best first" in proc.stdout
    (parent,), children = runs_of(project, "joblib")
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


def download(run_id: str, path: str, project: Path) -> Path:
    return Path(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=path, dst_path=str(project / "dl" / run_id)
        )
    )


def test_seeds_replicate_every_configuration_and_the_summary_aggregates_them(
    project: Path,
) -> None:
    """A 2 x 2 grid with sweep.seeds=2 on 1,000 training digits: 8 models, 4 configurations."""
    grid = ["model.hidden_units=16,32", "train.epochs=1,2", "sweep.seeds=2"]
    proc = sweep(project, "seeds", *grid, "tracking.registered_model=seeds-digits")
    assert "8 runs, 4 configurations, best first" in proc.stdout
    printed = proc.stdout + proc.stderr
    noise = re.findall(r"^[IWEF]\d{4} |absl|━|INFO mlflow|Registered model", printed, re.M)
    assert not noise and printed.count("\nEpoch 1/") + printed.startswith("Epoch 1/") == 8
    (parent,), children = runs_of(project, "seeds")
    names = sorted(c.info.run_name for c in children)
    assert names == sorted(
        f"mlp-h{h}-e{e}-n1000-s{s}" for h in (16, 32) for e in (1, 2) for s in (42, 43)
    )
    for child in children:
        assert_complete_child(child, parent.info.run_id, int(child.data.params["train.epochs"]))
    assert parent_artifacts(parent) >= {
        "summary.csv",
        "runs.csv",
        "summary.json",
        "figures/accuracy_by_hidden_units.png",
        "figures/accuracy_heatmap.png",
        "figures/accuracy_vs_seconds.png",
    }
    assert parent.data.metrics["jobs"] == 4 and parent.data.metrics["models"] == 8
    rows = list(csv.DictReader(download(parent.info.run_id, "summary.csv", project).open()))
    assert len(rows) == 4 and all(r["n"] == "2" for r in rows)
    means = [float(r["val_accuracy_mean"]) for r in rows]
    assert means == sorted(means, reverse=True)  # ranked on validation, not on test
    for row in rows:
        seeds = [c for c in children if c.data.tags["sweep_overrides"].startswith(row["config"])]
        assert len(seeds) == 2
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
    assert rows[0]["vs_best_welch_holm"] == "best" and rows[0]["p_vs_best"] == "nan"
    raw = [float(r["p_vs_best"]) for r in rows[1:]]
    assert [float(r["p_vs_best_holm"]) for r in rows[1:]] == pytest.approx(holm(raw))
    assert parent.data.metrics["best_val_accuracy_mean"] == pytest.approx(means[0])
    assert parent.data.tags["best_config"] == rows[0]["config"]
    per_model = list(csv.DictReader(download(parent.info.run_id, "runs.csv", project).open()))
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

    board = run(
        [
            "python", "-m", "pipeline.compare", "--experiment", "seeds",
            "--group-by", "model.hidden_units,train.epochs", "--csv", "board.csv",
        ],
        project,
    )  # fmt: skip
    first = board.stdout.splitlines()[2]
    top = rows[0]["config"].split()  # e.g. model.hidden_units=32 train.epochs=2
    assert first.startswith(" ".join(sorted(top))) or first.startswith(" ".join(top))
    grouped = list(csv.DictReader((project / "board.csv").open()))
    assert [float(r["val_accuracy_mean"]) for r in grouped] == pytest.approx(means)

    # The sweep's own runs.csv, summarised again with no store, gives its summary.csv exactly.
    kept = download(parent.info.run_id, "runs.csv", project)
    again = run(
        ["python", "-m", "pipeline.compare", "--runs-csv", str(kept), "--csv", "again.csv"],
        project,
        MLFLOW_TRACKING_URI="http://127.0.0.1:9",  # nothing listens there: no store is read
    )
    assert "best" in again.stdout
    summary = download(parent.info.run_id, "summary.csv", project).read_text()
    assert (project / "again.csv").read_text() == summary


def test_a_bad_value_fails_its_job_before_any_run_and_keeps_the_others(project: Path) -> None:
    proc = sweep(project, "failing", "model.hidden_units=16,-1", "train.epochs=1", check=False)
    assert proc.returncode == 1
    assert "1 of 2 jobs failed" in proc.stderr
    assert "model.hidden_units=-1" in proc.stderr and "received -1" in proc.stderr
    (parent,), children = runs_of(project, "failing")
    assert {c.info.run_name: c.info.status for c in children} == {
        "mlp-h16-e1-n1000-s42": "FINISHED"
    }
    assert parent.info.status == "FAILED"
    assert parent.data.tags["failure_reason"] == "PipelineError: 1 of 2 jobs failed"
    assert parent.data.metrics["jobs"] == 2 and parent.data.metrics["failed_jobs"] == 1
    assert "summary.csv" in parent_artifacts(parent)


def test_dvc_queue_lands_in_the_project_store(project: Path) -> None:
    run(
        [
            "dvc",
            "exp",
            "run",
            "--queue",
            "-S",
            "model.hidden_units=16,32",
            "-S",
            "train.epochs=1",
            "-S",
            "train.max_examples=1000",
            "-S",
            "tracking.experiment_name=queue",
        ],
        project,
    )
    run(["dvc", "queue", "start", "-j", "2"], project)
    import time

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], project).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    assert status.count("Success") == 2, status
    _, children = runs_of(project, "queue")
    assert sorted(c.info.run_name for c in children) == ["mlp-h16-e1-n1000", "mlp-h32-e1-n1000"]
    names = {c.data.tags["dvc_exp_name"] for c in children}
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    assert all(name in json.dumps(shown) for name in names)
    assert not list((project / ".dvc/tmp/exps").glob("*/mlflow.db"))
    run(["dvc", "plots", "diff", *sorted(names), "-o", "plots-diff"], project)
    html = (project / "plots-diff/index.html").read_text()
    assert all(name in html for name in names) and "Accuracy per epoch" in html


def search(project: Path, *overrides: str, check: bool = True):
    """A 3,000-digit, 1-epoch search of `+search=optuna` into the folder `multirun/search`."""
    args = ["python", "-m", "pipeline.sweep", "+search=optuna", "hydra.sweep.dir=multirun/search"]
    fixed = ["train.max_examples=3000", "train.epochs=1", "tracking.experiment_name=search"]
    return run([*args, *fixed, "tracking.registered_model=search-digits", *overrides], project,
               check=check)  # fmt: skip


def test_optuna_search_keeps_its_study_in_the_parent_and_resumes(project: Path) -> None:
    proc = search(project, "hydra.sweeper.n_trials=3")
    assert "3 runs, 3 configurations" in proc.stdout and "best trial" in proc.stdout
    (parent,), children = runs_of(project, "search")
    parent_id = parent.info.run_id
    for child in children:
        assert_complete_child(child, parent_id, epochs=1, examples=3000)
    assert parent_artifacts(parent) >= {"figures/search_history.png", "summary.csv"}
    study = {a.path for a in mlflow.MlflowClient().list_artifacts(parent_id, "study")}
    assert study == {f"study/{f}" for f in ("study.db", "trials.csv", "optimization_results.yaml")}
    best = max(children, key=lambda c: c.data.metrics["val_accuracy"])  # one seed per trial
    assert parent.data.metrics["best_value"] == pytest.approx(best.data.metrics["val_accuracy"])
    for key in ("model.hidden_units", "train.learning_rate"):
        assert float(parent.data.tags[f"search.best.{key}"]) == float(best.data.params[key])
    assert 16 <= int(best.data.params["model.hidden_units"]) <= 512

    # The same folder again: the study goes on with new trials, under the same parent.
    search(project, "hydra.sweeper.n_trials=1")
    (again,), children = runs_of(project, "search")
    assert again.info.run_id == parent_id and again.info.status == "FINISHED"
    assert len(children) == 4 and again.data.metrics["trials"] == 4
    proposed = {(c.data.params["model.hidden_units"], c.data.params["train.learning_rate"])
                for c in children}  # fmt: skip
    assert len(proposed) == 4
    trials = list(csv.DictReader((project / "multirun/search/trials.csv").open()))
    assert [t["trial"] for t in trials] == ["0", "1", "2", "3"]
    assert all(t["state"] == "COMPLETE" for t in trials)

    # A grid cannot reuse a sweep's folder.
    grid = ["-m", "train.epochs=1", "hydra.sweep.dir=multirun/search", *QUICK]
    refused = run(
        ["python", "-m", "pipeline.sweep", *grid, "tracking.experiment_name=search"],
        project,
        check=False,
    )
    assert refused.returncode != 0 and "already holds a sweep" in refused.stderr
    assert len(runs_of(project, "search")[1]) == 4


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


def artifact_paths(run_id: str, path: str | None = None) -> set[str]:
    """Every artifact of the run; logged images by key (their files carry a time and an id)."""
    client = mlflow.MlflowClient()
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(run_id, item.path) if item.is_dir else {item.path}
    return {re.sub(r"\+step\+.*", "", p) for p in found}


def test_a_sweep_job_and_dvc_exp_run_make_the_same_run(project: Path) -> None:
    """One core: the same configuration through a sweep and through DVC gives the same run."""
    sweep(project, "parity", "model.hidden_units=16", "train.epochs=1")
    settings = [*QUICK, "model.hidden_units=16", "train.epochs=1"]
    settings.append("tracking.experiment_name=parity")
    run(["dvc", "exp", "run", "-n", "parity", *(a for s in settings for a in ("-S", s))], project)
    run(["git", "checkout", "--", "params.yaml"], project)
    _, runs = runs_of(project, "parity")
    (job,) = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    (stage,) = [r for r in runs if r is not job]
    assert job.info.status == stage.info.status == "FINISHED"
    assert job.info.run_name == f"{stage.info.run_name}-s42" == "mlp-h16-e1-n1000-s42"
    assert job.data.params == stage.data.params
    assert set(job.data.metrics) == set(stage.data.metrics)
    assert artifact_paths(job.info.run_id) == artifact_paths(stage.info.run_id)
    assert {"figures/confusion_matrix.png", "images/confusion_matrix"} <= artifact_paths(
        job.info.run_id
    )
    job_tags, stage_tags = set(job.data.tags), set(stage.data.tags)
    assert job_tags - stage_tags == {"mlflow.parentRunId", "sweep_overrides"}
    assert stage_tags - job_tags == {"dvc_exp_name", "dvc_exp_baseline_rev"}
    # Both registered: the stage its model, the sweep its best (here its only) configuration's.
    assert job.data.tags["registered_version"] != stage.data.tags["registered_version"]
    # Same seed, data, threads and code: the same model, bit for bit.
    for key in ("weights_sha256", "params_sha256", "git_commit", "git_dirty", "mlflow.user"):
        assert job.data.tags[key] == stage.data.tags[key], key
    assert job.data.tags["mlflow.source.git.commit"] == stage.data.tags["git_commit"]
    assert job.data.tags["mlflow.source.name"] == "pipeline/sweep.py"
    assert stage.data.tags["mlflow.source.name"] == "pipeline/train.py"
    assert job.data.metrics["test_accuracy"] == stage.data.metrics["test_accuracy"]


def test_a_model_whose_evaluation_fails_fails_its_job_and_the_sweep_goes_on(
    project: Path,
) -> None:
    # Models are evaluated in the background while the next one trains: a figures folder that
    # cannot be made fails seed 42's evaluation after seed 43 of the job has started.
    sweep_dir = project / "multirun" / "evaluation-fails"
    blocked = sweep_dir / "0" / "s42" / "reports" / "figures"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where the figures folder goes\n")
    proc = sweep(
        project,
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
    (parent,), children = runs_of(project, "evaluation-fails")
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


def test_an_interrupted_sweep_finishes_the_model_it_was_evaluating(project: Path) -> None:
    # Job 0's model is evaluated in the background while job 1 trains; SIGTERM comes as job 1's
    # first epoch ends, while job 0's figures are still being drawn (SIGINT, Ctrl-C, is handled
    # alike: tests/test_faults.py).
    sweep_dir = project / "multirun" / "interrupted"
    cmd = [sys.executable, "-m", "pipeline.sweep", "-m", "train.epochs=1,500"]
    cmd += ["train.batch_size=8", *QUICK, "tracking.experiment_name=interrupted"]
    cmd += [f"hydra.sweep.dir={sweep_dir}"]
    proc, _ = started_until(cmd, project, "Epoch 1/500")
    proc.send_signal(signal.SIGTERM)
    said = proc.stdout.read()
    assert proc.wait(timeout=120) != 0
    (parent,), children = runs_of(project, "interrupted")
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
