"""The team's stack as production runs it, started with `python -m pipeline.stack up` as a user
does: PostgreSQL, the S3 object store (SeaweedFS) and the authenticated MLflow server, with DVC's
remote in the same bucket. Every command below gets only the exports `up` printed."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import requests

from helpers import (
    ROOT,
    as_stack_user,
    copy_project,
    free_port,
    run,
    serving,
    started_until,
    team_stack,
    within,
)
from pipeline.core.config import params_yaml_text
from pipeline.stack.processes import read_pid

pytestmark = pytest.mark.slow  # PostgreSQL, an object store, an MLflow server, training

QUICK = ["train.max_examples=2000", "train.epochs=1"]
STACK = [sys.executable, "-m", "pipeline.stack"]


@pytest.fixture(scope="module")
def stacked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, dict]]:
    """A project copy with a stack up for it; yields (project, stack folder, exports)."""
    project = copy_project(tmp_path_factory.mktemp("stack-project"))
    (project / "params.yaml").write_text(params_yaml_text(QUICK))
    run(["git", "commit", "-qam", "a quick run"], project)
    with team_stack(project) as (folder, exports):
        yield project, folder, exports


def bucket(folder: Path):
    """A boto3 client for the stack's bucket, with its keys (as a team's admin would have)."""
    from pipeline.stack.team import Stack

    return Stack(folder).object_store.client()


def keys_in_bucket(folder: Path) -> list[str]:
    client, found = bucket(folder), []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="team-bucket"):
        found += [item["Key"] for item in page.get("Contents", [])]
    return found


def test_up_writes_secrets_for_its_owner_only_and_the_remote_to_config_local(
    stacked: tuple[Path, Path, dict],
) -> None:
    project, folder, exports = stacked
    assert exports["MLFLOW_TRACKING_URI"].startswith("http://127.0.0.1:")
    assert exports["MLFLOW_TRACKING_USERNAME"] == "team"
    status = run([*STACK, "status", "--dir", str(folder)], project)
    assert status.stdout.count("answers") == 3 and "does not" not in status.stdout
    assert (folder / "secrets.json").stat().st_mode & 0o077 == 0
    local = configparser.ConfigParser()
    local.read(project / ".dvc" / "config.local")
    remote = local["'remote \"stack\"'"]  # as DVC writes a section name
    assert remote["url"] == "s3://team-bucket/dvc" and remote["endpointurl"].startswith("http")
    assert "stack" not in (project / ".dvc" / "config").read_text()
    assert not run(["git", "status", "--porcelain"], project).stdout.strip()


def test_up_again_keeps_what_runs_and_a_taken_port_is_one_line(
    stacked: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    project, folder, _ = stacked
    before = json.loads((folder / "stack.json").read_text())
    from pipeline.stack.team import Stack

    pids = {s["service"]: s["pid"] for s in Stack(folder).status()}
    assert len(pids) == 3 and None not in pids.values(), pids  # PostgreSQL, S3, MLflow
    run([*STACK, "up", "--dir", str(folder)], project)  # all running: nothing restarted
    assert json.loads((folder / "stack.json").read_text()) == before
    assert {s["service"]: s["pid"] for s in Stack(folder).status()} == pids
    other = run(
        [*STACK, "up", "--dir", str(tmp_path / "other"), "--port", str(before["port"])],
        project,
        check=False,
    )
    assert other.returncode == 1
    assert re.fullmatch(r"error: port \d+ on 127\.0\.0\.1, which .* is in use: .*\n", other.stderr)
    assert not (tmp_path / "other" / "postgres").exists()
    moved = run([*STACK, "up", "--dir", str(folder), "--port", "1"], project, check=False)
    assert moved.returncode == 1 and "holds a stack with port=" in moved.stderr


def test_pipeline_on_the_stack_keeps_every_artifact_in_the_bucket(
    stacked: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    project, folder, env = stacked
    run(["dvc", "repro"], project, **env)
    run_id = json.loads((project / "models" / "run.json").read_text())["run_id"]
    with as_stack_user(env):
        trained = mlflow.get_run(run_id)
        client = mlflow.MlflowClient()
        assert trained.info.status == "FINISHED"
        assert trained.data.metrics["test_accuracy"] > 0.8
        assert len(client.get_metric_history(run_id, "val_accuracy")) == 1
        assert trained.info.artifact_uri.startswith("mlflow-artifacts:")
        assert client.get_model_version_by_alias("mnist-digits", "champion").run_id == run_id

    digit = ROOT / "docs" / "images" / "confusion-matrix.png"  # any picture is read
    answers = [
        json.loads(
            run(
                ["python", "-m", "pipeline.predict", str(digit), "--json", *source], project, **env
            ).stdout.splitlines()[0]
        )
        for source in (
            ["--model-uri", "models:/mnist-digits@champion"],
            ["--model", "models/model.keras"],
        )
    ]
    assert answers[0] == answers[1]  # the champion from the stack is the model dvc repro made
    compared = run(["python", "-m", "pipeline.compare"], project, **env)
    assert trained.info.run_name in compared.stdout, compared.stdout
    port = free_port()
    app = [sys.executable, "-m", "pipeline.app", "--model-uri", "models:/mnist-digits@champion"]
    with serving([*app, "--port", str(port)], port, "/api/model", tmp_path / "app.log", project,
                 env) as url:  # fmt: skip
        answer = requests.post(
            f"{url}/api/predict",
            files={"image": ("d.png", digit.read_bytes(), "image/png")},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
    reproduced = run(["python", "-m", "pipeline.reproduce", run_id], project, check=False, **env)
    assert reproduced.returncode == 0, reproduced.stdout + reproduced.stderr

    keys = keys_in_bucket(folder)
    ours = [k for k in keys if f"/{run_id}/" in k]
    assert any(k.endswith("MLmodel") for k in keys), "no model in the bucket"
    assert any("figures/confusion_matrix.png" in k for k in ours)
    assert any(k.endswith("config.yaml") for k in ours) or any("config" in k for k in ours)
    assert not (project / "mlruns").exists() and not (project / "mlartifacts").exists()


def test_dvc_push_then_a_fresh_clone_pulls_and_has_nothing_to_run(
    stacked: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    project, folder, env = stacked
    if not (project / "models" / "model.keras").exists():
        run(["dvc", "repro"], project, **env)
    run(["git", "add", "-A"], project)  # dvc.lock and the reports DVC keeps in git
    run(["git", "commit", "-qm", "trained on the stack", "--allow-empty"], project)
    run(["dvc", "push", "-r", "stack"], project)
    assert any(k.startswith("dvc/") for k in keys_in_bucket(folder))
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    shutil.copy(project / ".dvc" / "config.local", clone / ".dvc" / "config.local")
    run(["dvc", "pull", "-r", "stack"], clone)
    assert (clone / "models" / "model.keras").read_bytes() == (
        project / "models" / "model.keras"
    ).read_bytes()
    status = run(["dvc", "status"], clone)
    assert "Data and pipelines are up to date." in status.stdout, status.stdout


def test_a_wrong_secret_is_dvcs_own_error(stacked: tuple[Path, Path, dict]) -> None:
    project, _, _ = stacked
    config = project / ".dvc" / "config.local"
    kept = config.read_text()
    try:
        run(["dvc", "remote", "modify", "--local", "stack", "secret_access_key", "wrong"], project)
        pushed = run(["dvc", "push", "-r", "stack"], project, check=False)
    finally:
        config.write_text(kept)
    assert pushed.returncode != 0
    assert "ERROR:" in pushed.stderr and "Traceback" not in pushed.stderr + pushed.stdout


def newest_run(env: dict[str, str]):
    with as_stack_user(env):
        return mlflow.search_runs(
            experiment_names=["mnist"], order_by=["attributes.start_time DESC"],
            max_results=1, output_format="list",
        )[0]  # fmt: skip


def test_object_store_lost_while_a_run_uploads_its_model(stacked: tuple[Path, Path, dict]) -> None:
    """The store is killed while the run's model is on its way to the bucket (the logged
    model's first files are in, its 78 MB model.keras not yet): the upload fails, the run ends
    FAILED with one line naming the server, the local model stays and the bucket holds no part
    of its model.keras; once `up` brings the store back, `dvc repro` completes."""
    project, folder, env = stacked
    # A model of 6.5 million weights (and Adam's two copies), so that its upload takes a while;
    # the store stays down: the upload's retries need not wait the default 2 minutes for it.
    big = ["model.hidden_units=8192", "train.epochs=1", "train.max_examples=2000",
           "tracking.server_wait_s=1"]  # fmt: skip
    (project / "params.yaml").write_text(params_yaml_text(big))
    before = set(keys_in_bucket(folder))
    training, _ = started_until(["dvc", "repro", "train"], project, "Epoch 1/", **env)

    def upload_begun() -> str | None:
        """The folder in the bucket of the logged model being uploaded, once its first file
        is in (None: the training ended first)."""
        while training.poll() is None:
            new = set(keys_in_bucket(folder)) - before
            begun = [k for k in new if "/models/m-" in k]
            if begun:
                return begun[0].split("/artifacts/")[0]
            time.sleep(0.05)
        return None

    model_folder = within(600, upload_begun)
    assert model_folder is not None, training.communicate()[0]
    os.killpg(read_pid(folder / "run" / "s3.pid"), signal.SIGKILL)
    said, _ = training.communicate(timeout=600)
    assert training.returncode != 0
    assert "could not store the run's artifacts" in said and "Traceback" not in said, said
    failed = newest_run(env)
    assert failed.info.status == "FAILED"
    assert "could not store the run's artifacts" in failed.data.tags["failure_reason"]
    assert (project / "models" / "model.keras").is_file()  # the local output stays

    run([*STACK, "up", "--dir", str(folder)], project)  # starts the store alone, same data
    assert f"{model_folder}/artifacts/data/model.keras" not in keys_in_bucket(folder)
    run(["dvc", "repro"], project, **env)
    again = newest_run(env)
    assert again.info.status == "FINISHED" and again.info.run_id != failed.info.run_id
    assert json.loads((project / "models" / "run.json").read_text())["run_id"] == again.info.run_id


def test_no_secret_in_runs_logs_or_tracked_files(stacked: tuple[Path, Path, dict]) -> None:
    """No password or key of the stack is in: a run's params, tags, metrics or dataset records;
    a registered model's or version's tags, description or source; a logged model's tags,
    params or metrics; any object in the bucket (binary ones too); the services' logs; any file
    of the project, tracked or not (outputs, a sweep's folder, the DVC cache), but
    .dvc/config.local, which holds the remote's keys by design and which git ignores."""
    project, folder, env = stacked
    if not (project / "models" / "run.json").exists():
        run(["dvc", "repro"], project, **env)
    sweep = ["python", "-m", "pipeline.sweep", "train.max_examples=1000",
             "tracking.experiment_name=no-secret"]  # fmt: skip
    run(sweep, project, **env)
    run(["dvc", "push", "-r", "stack"], project)
    secrets = [s.encode() for s in json.loads((folder / "secrets.json").read_text()).values()]
    places: dict[str, bytes] = {}
    with as_stack_user(env):
        client = mlflow.MlflowClient()
        for found in mlflow.search_runs(search_all_experiments=True, output_format="list"):
            datasets = [
                (d.dataset.name, d.dataset.digest, d.dataset.source, d.dataset.schema,
                 d.dataset.profile, [(t.key, t.value) for t in d.tags])
                for d in found.inputs.dataset_inputs
            ]  # fmt: skip
            data = found.data
            places[f"run {found.info.run_id}"] = json.dumps(
                [data.params, data.tags, data.metrics, datasets], default=str
            ).encode()
        for model in client.search_registered_models():
            places[f"registered {model.name}"] = json.dumps(
                [model.tags, model.description]
            ).encode()
            for version in client.search_model_versions(f"name = '{model.name}'"):
                places[f"version {model.name}/{version.version}"] = json.dumps(
                    [version.tags, version.description, version.source]
                ).encode()
        experiments = [e.experiment_id for e in client.search_experiments()]
        for logged in mlflow.search_logged_models(
            experiment_ids=experiments, output_format="list"
        ):
            metrics = [(m.key, m.value) for m in logged.metrics or []]
            places[f"logged {logged.model_id}"] = json.dumps(
                [logged.tags, logged.params, metrics], default=str
            ).encode()
    s3 = bucket(folder)
    for key in keys_in_bucket(folder):
        places[f"s3 {key}"] = s3.get_object(Bucket="team-bucket", Key=key)["Body"].read()
    for log in (folder / "logs").iterdir():
        places[str(log)] = log.read_bytes()
    for path in project.rglob("*"):
        where = path.relative_to(project).as_posix()
        if path.is_file() and not where.startswith((".venv/", ".dvc/config.local")):
            places[where] = path.read_bytes()
    leaks = [(where, s[:4]) for where, text in places.items() for s in secrets if s in text]
    assert not leaks
    # Each kind of place was searched, with what it holds: not an empty list.
    assert {w.split()[0] for w in places} >= {"run", "registered", "version", "logged", "s3"}
    assert any(w.startswith("s3 ") and w.endswith("model.keras") for w in places)
    assert any(w.startswith("s3 dvc/") for w in places)  # DVC's pushed (binary) objects
    assert {"models/run.json", "reports/metrics.json", "dvc.lock"} <= set(places)
    assert any(w.startswith("multirun/") and w.endswith("summary.csv") for w in places)
    assert any(w.startswith(".dvc/cache/") for w in places)
