"""Faults injected for real: bad and silent mirrors, killed processes, divergence, a dead server.

docs/reliability.md lists each case with the behaviour these tests check.
"""

import functools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from helpers import (
    BROKEN_MIRRORS,
    NAMES,
    ROOT,
    broken_mirror,
    gzip_folder,
    run_env,
    run_stage,
    runs_in,
    spec_of,
    started_until,
    within,
    write_processed,
)
from pipeline.core.config import compose, validate
from pipeline.core.data import sha256_file
from pipeline.core.download import NoDowngradeRedirects, fetch_file
from pipeline.core.errors import ConfigError, DataError, PipelineError

HUNG = 120  # seconds: only a test whose timeout did not work waits this long


def test_html_and_truncated_mirrors_are_reported_then_the_next_is_used(
    small_mnist: Path, tmp_path: Path, serve, capsys: pytest.CaptureFixture
) -> None:
    html = serve(small_mnist, "html")
    truncated = serve(gzip_folder(small_mnist, tmp_path / "t", truncate=True), "ok")
    good = serve(gzip_folder(small_mnist, tmp_path / "g"), "ok")
    spec = spec_of(small_mnist / NAMES[0])
    raw = tmp_path / "raw"
    raw.mkdir()
    assert fetch_file(spec, raw, [html, truncated, good], timeout=5) == good
    err = capsys.readouterr().err
    assert f"from {html} failed" in err and f"from {truncated} failed" in err
    assert sha256_file(raw / spec.name) == spec.sha256


def test_no_source_left_lists_every_one_and_leaves_nothing(
    small_mnist: Path, tmp_path: Path, serve
) -> None:
    html = serve(small_mnist, "html")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{closed.getsockname()[1]}/"
    spec = spec_of(small_mnist / NAMES[1])
    raw = tmp_path / "raw"
    raw.mkdir()
    with pytest.raises(DataError) as err:
        fetch_file(spec, raw, [html, refused], timeout=5)
    message = str(err.value)
    assert f"  {html}: " in message and f"  {refused}: " in message
    assert "Connection refused" in message and "DATA_MIRROR" in message
    assert list(raw.iterdir()) == []


def test_silent_server_costs_the_configured_timeout(small_mnist: Path, tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        spec = spec_of(small_mnist / NAMES[1])
        with pytest.raises(DataError, match="timed out"):  # not hung: its 1 s timeout worked
            within(HUNG, lambda: fetch_file(spec, tmp_path, [url], timeout=1))


@pytest.mark.parametrize("case", BROKEN_MIRRORS)
def test_each_broken_mirror_gets_a_reason_and_the_next_source(
    case: str, small_mnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    spec = spec_of(small_mnist / NAMES[0])
    good = str(gzip_folder(small_mnist, tmp_path / "good"))
    raw = tmp_path / "raw"
    raw.mkdir()
    with broken_mirror(case, small_mnist) as bad:
        fetch = functools.partial(fetch_file, spec, raw, [bad, good], 1, min_speed_kb_s=1)
        assert within(HUNG, fetch) == good
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and f"from {bad} failed (" in lines[0], lines
    assert "Traceback" not in lines[0]
    assert sorted(p.name for p in raw.iterdir()) == [spec.name]


def test_fetch_with_only_broken_mirrors_says_why_for_each(
    small_mnist: Path, tmp_path: Path
) -> None:
    work = workdir(tmp_path, small_params(small_mnist))
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["data"].update(timeout_s=1, mirrors=["https://127.0.0.1:9/mnist/"])
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    with broken_mirror("bad-status", small_mnist) as bad:
        done = within(HUNG, lambda: run_stage("fetch", work, check=False, MNIST_MIRROR=bad))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "could not fetch " in done.stderr and " from any source:" in done.stderr
    assert f"  {bad}: broken HTTP answer (BadStatusLine: HELLO THERE)" in done.stderr
    assert "  https://127.0.0.1:9/mnist/: [Errno 111] Connection refused" in done.stderr
    assert list((work / "data/raw").iterdir()) == []


def test_https_is_never_downgraded_by_a_redirect() -> None:
    request = urllib.request.Request("https://mirror.example/mnist/x.gz")
    with pytest.raises(urllib.error.URLError, match="refused redirect"):
        NoDowngradeRedirects().redirect_request(
            request, None, 302, "Found", {}, "http://mirror.example/mnist/x.gz"
        )


def test_configured_mirrors_must_be_https() -> None:
    with pytest.raises(ConfigError, match="data.mirrors must be a list of https:// URLs"):
        validate(compose(["data.mirrors=[http://mirror.example/mnist/]"]))


def small_params(small_mnist: Path, **train: object) -> dict:
    params = compose()
    params["data"]["files"] = {
        key: spec_of(small_mnist / name).model_dump()
        for key, name in zip(
            ("train_images", "train_labels", "test_images", "test_labels"), NAMES, strict=True
        )
    }
    params["train"].update(train)
    return params


def workdir(tmp_path: Path, params: dict) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    return work


def test_fetch_killed_mid_download_then_rerun(small_mnist: Path, tmp_path: Path, serve) -> None:
    work = workdir(tmp_path, small_params(small_mnist))
    slow = serve(gzip_folder(small_mnist, tmp_path / "slow"), "slow")
    env = run_env(PYTHONPATH=str(ROOT), DVC_ROOT=str(work), MNIST_MIRROR=slow)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.fetch"],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    raw = work / "data/raw"
    deadline = time.monotonic() + 60
    while not list(raw.glob(".*.part")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(raw.glob(".*.part")), "the download never started"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert not [p for p in raw.iterdir() if not p.name.startswith(".")]
    good = serve(gzip_folder(small_mnist, tmp_path / "good"), "ok")
    run_stage("fetch", work, MNIST_MIRROR=good)
    assert sorted(p.name for p in raw.iterdir()) == sorted(NAMES)
    for name in NAMES:
        assert sha256_file(raw / name) == sha256_file(small_mnist / name)


def processed_workdir(small_mnist: Path, tmp_path: Path, **train: object) -> Path:
    """A folder with params.yaml and small processed splits of random digits."""
    work = workdir(tmp_path, small_params(small_mnist, **train))
    (work / "data").mkdir()
    (work / "data/raw").symlink_to(small_mnist)
    rng = np.random.default_rng(0)
    splits = {
        split: (rng.integers(0, 256, (n, 28, 28, 1), np.uint8), rng.integers(0, 10, n, np.uint8))
        for split, n in (("train", 512), ("val", 64), ("test", 64))
    }
    write_processed(work, splits, [str(c) for c in range(10)])
    return work


@pytest.mark.slow
def test_divergence_fails_the_run_and_leaves_no_model(small_mnist: Path, tmp_path: Path) -> None:
    work = processed_workdir(small_mnist, tmp_path, learning_rate=1e6, epochs=2)
    proc = run_stage("train", work, check=False)
    assert proc.returncode == 1
    assert "error: training diverged in epoch 1" in proc.stderr
    assert "Lower train.learning_rate (received 1000000.0)" in proc.stderr
    (failed,) = runs_in(f"sqlite:///{work}/mlflow.db", "mnist")
    assert failed.info.status == "FAILED"
    assert "TrainingDiverged: training diverged" in failed.data.tags["failure_reason"]
    assert not (work / "models/model.keras").exists()


@pytest.mark.slow
def test_evaluate_refuses_a_model_changed_after_training(
    small_mnist: Path, tmp_path: Path
) -> None:
    work = processed_workdir(small_mnist, tmp_path, epochs=1)
    run_stage("train", work)
    with (work / "models/model.keras").open("ab") as fh:
        fh.write(b"changed")
    proc = run_stage("evaluate", work, check=False)
    assert proc.returncode == 1
    assert "was changed since. Retrain with `uv run dvc repro --force train`." in proc.stderr
    (changed,) = runs_in(f"sqlite:///{work}/mlflow.db", "mnist")
    assert changed.info.status == "FAILED"
    assert changed.data.tags["failure_reason"].startswith("DataError: ")
    assert not (work / "reports/metrics.json").exists()


def train_until_second_epoch(work: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pipeline.train"]
    return started_until(cmd, work, "Epoch 2/", PYTHONPATH=str(ROOT), DVC_ROOT=str(work))[0]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_training_ends_killed(small_mnist: Path, tmp_path: Path, sig) -> None:
    work = processed_workdir(small_mnist, tmp_path, epochs=500, batch_size=8)
    proc = train_until_second_epoch(work)
    proc.send_signal(sig)
    said = proc.communicate(timeout=60)[0]  # stdout and stderr, from the second epoch on
    assert proc.returncode == 130
    assert f"stopped (received {signal.Signals(sig).name})" in said and "Traceback" not in said
    (killed,) = runs_in(f"sqlite:///{work}/mlflow.db", "mnist")
    assert killed.info.status == "KILLED"
    reason = killed.data.tags["failure_reason"]
    assert reason == f"KeyboardInterrupt: received {signal.Signals(sig).name}"
    assert not (work / "models/model.keras").exists()


@pytest.mark.slow
def test_sigkilled_run_is_found_and_marked_killed(small_mnist: Path, tmp_path: Path) -> None:
    work = processed_workdir(small_mnist, tmp_path, epochs=500, batch_size=8)
    proc = train_until_second_epoch(work)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    (orphan,) = runs_in(f"sqlite:///{work}/mlflow.db", "mnist")
    assert orphan.info.status == "RUNNING"
    listed = run_stage("runs", work)
    assert "1 running, 1 orphaned, 0 marked KILLED" in listed.stdout
    cleaned = run_stage("runs", work, "--cleanup")
    assert f"{orphan.info.run_id}" in cleaned.stdout and "-> KILLED" in cleaned.stdout
    run_ = mlflow.get_run(orphan.info.run_id)
    assert run_.info.status == "KILLED"
    assert f"process {proc.pid}" in run_.data.tags["failure_reason"]


@pytest.mark.slow
def test_tracking_server_down_fails_fast_before_training(
    small_mnist: Path, tmp_path: Path
) -> None:
    work = processed_workdir(small_mnist, tmp_path)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{closed.getsockname()[1]}"
    proc = within(HUNG, lambda: run_stage("train", work, check=False, MLFLOW_TRACKING_URI=uri))
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1].startswith(
        f"error: the MLflow tracking server at {uri} (MLFLOW_TRACKING_URI or tracking.uri) "
        "does not answer"
    )
    assert "Epoch" not in proc.stdout
    assert not (work / "mlflow.db").exists()


LOGGER = """
import sys, time
import numpy as np
from pipeline.core import names
from pipeline.tracking import runs, store
from pipeline.core import names
experiment_id = store.setup("load")
with runs.tracked_run(experiment_id, f"job-{sys.argv[1]}") as run_id:
    wave = sys.argv[1].split("-")[0]  # a new dataset (by its digest) per wave
    runs.set_tags(run_id, {"data.processed.test.sha256": wave})
    time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all log it at once
    runs.log_datasets(run_id, {"test": (3, 28, 28, 1)})
    for step in range(25):
        runs.log_metrics(run_id, {"loss": 1.0 / (step + 1)}, step=step)
"""


@pytest.mark.slow
def test_parallel_jobs_on_a_new_then_an_existing_store(tmp_path: Path) -> None:
    """4 jobs create the store at once, then 8 log to it; each wave logs a new dataset at the
    same moment: every run complete."""
    env = run_env(PYTHONPATH=str(ROOT), DVC_ROOT=str(tmp_path))
    for wave in (4, 8):
        start = time.time() + 2 * wave  # once every process has imported MLflow, on 2 cores
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", LOGGER, f"wave{wave}-{i}", str(start)],
                env=env,
                cwd=tmp_path,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(wave)
        ]
        errors = [p.stderr.read() for p in procs if p.wait(timeout=300) != 0]
        assert not errors, errors[0]
    runs = runs_in(f"sqlite:///{tmp_path}/mlflow.db", "load")
    assert len(runs) == 12
    client = mlflow.MlflowClient()
    for r in runs:
        assert r.info.status == "FINISHED"
        assert len(client.get_metric_history(r.info.run_id, "loss")) == 25
        (logged,) = [d.dataset for d in r.inputs.dataset_inputs]
        assert (logged.name, logged.digest) == ("mnist-test", r.info.run_name.split("-")[1])


def test_unsafe_or_changed_model_files_are_refused(tmp_path: Path) -> None:
    import keras

    from pipeline.core.model import build_mlp, load_model

    lambda_model = keras.Sequential([keras.Input((28, 28)), keras.layers.Lambda(lambda x: x * 2)])
    lambda_model.save(tmp_path / "lambda.keras")
    with pytest.raises(PipelineError, match=r"refused to load .*lambda.keras.*safe_mode"):
        load_model(tmp_path / "lambda.keras")
    path = tmp_path / "model.keras"
    build_mlp(8, 10, (28, 28)).save(path)
    assert load_model(path, sha256=sha256_file(path)).output_shape == (None, 10)
    with pytest.raises(PipelineError, match="was changed since"):
        load_model(path, sha256="0" * 64)
    os.rename(path, tmp_path / "model.h5")
    with pytest.raises(PipelineError, match="only .keras files are loaded"):
        load_model(tmp_path / "model.h5")
