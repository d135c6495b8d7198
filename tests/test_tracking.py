import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from helpers import ROOT, run_env, use_store, within
from pipeline.core import names
from pipeline.core.config import flatten
from pipeline.tracking import runs, store


@pytest.fixture
def local_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh project root with its own sqlite store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    return tmp_path


@pytest.fixture
def experiment_id(local_store: Path) -> str:
    return store.setup("tests")


def test_store_is_sqlite_and_mlruns_at_the_root(local_store: Path, experiment_id: str) -> None:
    assert mlflow.get_tracking_uri() == f"sqlite:///{local_store}/mlflow.db"
    experiment = mlflow.get_experiment_by_name("tests")
    assert experiment.artifact_location == (local_store / "mlruns").as_uri()
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert (local_store / "mlflow.db").is_file()
    assert store.setup("tests") == experiment.experiment_id == experiment_id


def test_user_tracking_uri_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert store.tracking_uri("http://10.0.0.1:5000", tmp_path) == "http://127.0.0.1:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert store.tracking_uri("http://10.0.0.1:5000", tmp_path) == "http://10.0.0.1:5000"
    assert store.tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"


def test_finished_failed_and_killed(experiment_id: str) -> None:
    with runs.tracked_run(experiment_id, "ok") as ok:
        runs.log_metrics(ok, {"m": 1.0})
    with pytest.raises(ValueError), runs.tracked_run(experiment_id, "boom") as failed:
        raise ValueError("bad things")
    with pytest.raises(KeyboardInterrupt), runs.tracked_run(experiment_id, "ctrl-c") as killed:
        raise KeyboardInterrupt
    status = {r: mlflow.get_run(r) for r in (ok, failed, killed)}
    assert status[ok].info.status == "FINISHED"
    assert status[failed].info.status == "FAILED"
    assert status[failed].data.tags[names.FAILURE_TAG] == "ValueError: bad things"
    assert status[killed].info.status == "KILLED"
    assert status[ok].data.metrics == {"m": 1.0} and mlflow.active_run() is None


def test_logging_goes_to_the_named_run_not_the_active_one(experiment_id: str) -> None:
    with (
        runs.tracked_run(experiment_id, "explicit") as explicit,
        mlflow.start_run(experiment_id=experiment_id, run_name="active") as active,
    ):
        runs.log_params(explicit, {f"p{i}": i for i in range(150)})
        runs.log_metrics(explicit, {"loss": 0.5}, step=3)
    assert mlflow.get_run(active.info.run_id).data.params == {}
    logged = mlflow.get_run(explicit)
    assert len(logged.data.params) == 150 and logged.data.params["p149"] == "149"
    (point,) = mlflow.MlflowClient().get_metric_history(explicit, "loss")
    assert (point.value, point.step) == (0.5, 3)


@pytest.mark.slow
def test_sigterm_marks_the_run_killed(tmp_path: Path) -> None:
    script = (
        "import time, mlflow\n"
        "from pipeline.tracking import runs, store\n"
        "experiment_id = store.setup('tests')\n"
        "with runs.tracked_run(experiment_id, 'long') as run_id:\n"
        "    print(run_id, flush=True)\n"
        "    time.sleep(60)\n"
    )
    env = run_env(PYTHONPATH=str(ROOT), DVC_ROOT=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_id = proc.stdout.readline().strip()
    assert run_id, proc.stderr.read()
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) != 0
    use_store(f"sqlite:///{tmp_path}/mlflow.db")
    run = mlflow.get_run(run_id)
    assert run.info.status == "KILLED"
    assert "SIGTERM" in run.data.tags[names.FAILURE_TAG]


def test_flatten(default_config) -> None:
    flat = flatten(default_config.to_dict())
    assert flat["model.hidden_units"] == 128 and flat["train.epochs"] == 5
    assert flat["data.files.train_images.sha256"].startswith("ba891046")


def test_model_run_logs_config_and_the_diff_of_a_dirty_tree(
    local_store: Path, experiment_id: str
) -> None:
    env = run_env()
    git = ["git", "-C", str(local_store)]
    subprocess.run([*git, "init", "-q"], check=True, env=env)
    (local_store / "code.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "code.py"], check=True, env=env)
    subprocess.run([*git, "commit", "-qm", "x"], check=True, env=env)
    with runs.model_run(local_store, "seed: 1\n", {}, experiment_id, "clean") as clean:
        pass
    (local_store / "code.py").write_text("x = 2\n")
    with runs.model_run(local_store, "seed: 2\n", {}, experiment_id, "dirty") as dirty:
        pass
    client = mlflow.MlflowClient()
    assert [a.path for a in client.list_artifacts(clean)] == ["config.yaml"]
    assert mlflow.get_run(dirty).data.tags["git_dirty"] == "true"
    diff = mlflow.artifacts.load_text(f"runs:/{dirty}/uncommitted.diff")
    assert "-x = 1" in diff and "+x = 2" in diff
    config = mlflow.artifacts.load_text(f"runs:/{dirty}/config.yaml")
    assert config == "seed: 2\n"


def test_read_run_id_errors(experiment_id: str, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="run.json not found"):
        runs.read_run(tmp_path / "run.json")
    (tmp_path / "run.json").write_text('{"run_id": "0123456789abcdef", "experiment_id": "1"}')
    with pytest.raises(
        Exception, match="no run '0123456789abcdef' in the MLflow store .*run.json names it"
    ):
        runs.read_run(tmp_path / "run.json")


def test_splits_are_logged_as_datasets_and_figures_as_keyed_images(
    experiment_id: str, tmp_path: Path
) -> None:
    from PIL import Image

    digest = "ab" * 32
    tags = {"data.processed.train.sha256": digest}
    with runs.tracked_run(experiment_id, "data", tags) as run_id:
        runs.log_datasets(run_id, {"train": (7, 28, 28, 1), "test": (3, 28, 28, 1)})
        Image.new("RGB", (40, 30), "red").save(tmp_path / "confusion_matrix.png")
        runs.log_images(run_id, tmp_path)
    inputs = {d.dataset.name: d for d in mlflow.get_run(run_id).inputs.dataset_inputs}
    assert set(inputs) == {"mnist-train", "mnist-test"}
    train = inputs["mnist-train"]
    assert train.dataset.digest == digest[:32] and '"features_shape": [7, 28, 28, 1]' in (
        train.dataset.profile
    )
    assert '"targets_shape": [7]' in train.dataset.profile
    assert {t.key: t.value for t in train.tags}["mlflow.data.context"] == "train"
    images = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "images")}
    assert any("confusion_matrix" in path for path in images)


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("http://ana:s3cret@127.0.0.1:9/", "MLFLOW_TRACKING_PASSWORD"),
        ("postgresql://ana:s3cret@127.0.0.1:9/mlflow", "PGPASSWORD"),
    ],
)
def test_a_store_uri_with_a_password_is_refused_and_never_shown(uri: str, says: str) -> None:
    for command in (["pipeline.compare"], ["pipeline.runs"]):
        proc = subprocess.run(
            [sys.executable, "-m", *command],
            cwd=ROOT,
            env=run_env(MLFLOW_TRACKING_URI=uri),
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert says in proc.stderr and ":***@127.0.0.1" in proc.stderr
        assert "s3cret" not in proc.stdout + proc.stderr


RACE = """
import sys, time
import mlflow
import numpy as np
from pipeline.core.config import RegistryConfig
from pipeline.tracking import registry
mlflow.set_tracking_uri(sys.argv[1]); mlflow.set_registry_uri(sys.argv[1])
client = mlflow.MlflowClient()
experiment = client.get_experiment_by_name("race").experiment_id
labels = np.zeros(1000, dtype=np.int64)

def predicted(accuracy):  # right on the first 1000 x accuracy examples: nested, so paired
    return np.where(np.arange(1000) < round(accuracy * 1000), 0, 1)

def score(uri):  # another version's predictions, from the accuracy it recorded
    version = uri.rsplit("/", 1)[1]
    tags = client.get_model_version("race", version).tags
    return predicted(float(tags["promotion.accuracy"]))

rule = RegistryConfig(promote="significant", alpha=0.05)
while time.time() < float(sys.argv[2]):  # both start together
    time.sleep(0.005)
for accuracy in map(float, sys.argv[3:]):
    run_id = client.create_run(experiment).info.run_id
    logged = mlflow.initialize_logged_model(name="model", source_run_id=run_id,
                                            experiment_id=experiment)
    examples = registry.Examples(labels, "same", predicted(accuracy), score,
                                 np.arange(1000, dtype=np.uint64), np.zeros(0, np.uint64))
    registry.register(run_id, f"models:/{logged.model_id}", "race", rule, examples)
    client.set_terminated(run_id)
"""


def test_two_evaluations_at_once_end_with_one_champion_and_every_decision(
    tmp_path: Path,
) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    use_store(uri)
    mlflow.create_experiment("race", artifact_location=str(tmp_path / "mlruns"))
    mlflow.MlflowClient().create_registered_model("race")
    start = str(time.time() + 8)
    scores = {"a": [0.91, 0.93, 0.95, 0.97, 0.90], "b": [0.92, 0.94, 0.96, 0.98, 0.89]}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, uri, start, *map(str, accuracies)],
            cwd=ROOT,
            env=run_env(PYTHONPATH=str(ROOT)),
            stderr=subprocess.PIPE,
            text=True,
        )
        for accuracies in scores.values()
    ]
    for proc in procs:
        assert proc.wait(120) == 0, proc.stderr.read()
    client = mlflow.MlflowClient()
    versions = client.search_model_versions("name = 'race'")
    assert len(versions) == 10
    decisions = [v.tags.get("promotion.decision") for v in versions]
    assert all(decisions), decisions  # every one recorded
    champion = client.get_model_version_by_alias("race", "champion")
    assert champion.tags["promotion.decision"] in ("promoted", "first champion")
    # 0.98 is better than every other by at least 10 examples, all of them its own (p < 0.001):
    # it was judged against whichever champion it met and took the alias; nothing later beat it.
    assert champion.tags["promotion.accuracy"] == "0.98"
    kept = [v for v in versions if v.tags["promotion.decision"].startswith("kept")]
    assert {v.tags["promotion.accuracy"] for v in kept} >= {"0.9", "0.89"}


def test_a_sweeps_epoch_logger_logs_ended_epochs_while_training_goes_on(
    experiment_id: str,
) -> None:
    """A sweep's run shows its epochs as they end (by a thread, batched), not only once its
    model is trained; what the thread has not logged when training ends is handed back once,
    and nothing twice."""
    from pipeline.tracking.experiment import epoch_logger

    client = mlflow.MlflowClient()
    run_id = client.create_run(experiment_id).info.run_id
    logger = epoch_logger(run_id, every=0.05)
    logger.on_epoch_end(0, {"loss": 0.5})
    logger.on_epoch_end(1, {"loss": 0.4})

    def logged() -> list[int]:
        while len(client.get_metric_history(run_id, "loss")) < 2:
            time.sleep(0.05)
        return [m.step for m in client.get_metric_history(run_id, "loss")]

    assert within(60, logged) == [1, 2]  # training has not ended: epoch 3 is still to come
    logger.on_epoch_end(2, {"loss": 0.3})
    logger.on_train_end()
    rest = logger.rest()
    runs.log_epochs(run_id, rest)
    history = client.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == [1, 2, 3]
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == [0.5, 0.4, 0.3]
    assert [r[0] for r in logger.held] == [1, 2, 3]
