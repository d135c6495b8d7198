"""A team server that lets in only who belongs: the stack's `mlflow server --app-name basic-auth`
on its PostgreSQL (runs in one database, users and permissions in another), started with
`pipeline.stack up` and stopped after the tests. Users: the stack's admin (who makes the
experiment), an editor with EDIT on it, and a reader with the default READ."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import mlflow
import mlflow.server
import pytest
import requests

from helpers import (
    assert_complete_child,
    copy_project,
    run,
    sweep_runs,
    use_store,
)
from pipeline.core.config import params_yaml_text
from pipeline.stack.team import Stack

pytestmark = pytest.mark.slow  # an authenticated MLflow server on PostgreSQL

EXPERIMENT, MODEL = "team", "team-digits"
EDITOR = ("editor", secrets.token_urlsafe(18))
READER = ("reader", secrets.token_urlsafe(18))
QUICK = ["train.max_examples=2000", "train.epochs=1"]


@pytest.fixture(scope="module")
def team(stack: tuple[Path, dict[str, str]]) -> Iterator[str]:
    """The stack's server with two more users, made by its admin; yields its URL. The test
    process talks to it as the admin."""
    folder, exports = stack
    url = exports["MLFLOW_TRACKING_URI"]
    admin = ("admin", Stack(folder).secrets["admin_password"])
    os.environ.update(as_user(admin))  # run_env keeps it from the commands under test
    try:
        users = mlflow.server.get_app_client("basic-auth", tracking_uri=url)
        for name, password in (EDITOR, READER):
            users.create_user(name, password)
        use_store(url)
        experiment_id = mlflow.MlflowClient().create_experiment(EXPERIMENT)
        users.grant_user_permission(EDITOR[0], "experiment", experiment_id, "EDIT")
        yield url
    finally:
        for key in as_user(admin):
            os.environ.pop(key, None)


@pytest.fixture(scope="module")
def project(team: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project copy pointed at the team server, its data prepared."""
    root = copy_project(tmp_path_factory.mktemp("team-project"))
    overrides = [
        "tracking=server",
        f"tracking.uri={team}",
        f"tracking.experiment_name={EXPERIMENT}",
    ]
    overrides.append(f"tracking.registered_model={MODEL}")
    (root / "params.yaml").write_text(params_yaml_text([*overrides, *QUICK]))
    run(["git", "commit", "-qam", "the team server"], root)
    run(["dvc", "repro", "preprocess"], root)
    return root


def as_user(user: tuple[str, str]) -> dict[str, str]:
    return {"MLFLOW_TRACKING_USERNAME": user[0], "MLFLOW_TRACKING_PASSWORD": user[1]}


def runs_of_team() -> list:
    return mlflow.search_runs(experiment_names=[EXPERIMENT], output_format="list")


def test_no_or_wrong_credentials_get_401_and_create_nothing(team: str) -> None:
    create = f"{team}/api/2.0/mlflow/experiments/create"
    for auth in (None, (EDITOR[0], "not-the-password"), ("nobody", EDITOR[1])):
        response = requests.post(create, json={"name": "intruders"}, auth=auth, timeout=30)
        assert response.status_code == 401, (auth, response.status_code)
    assert requests.get(f"{team}/health", timeout=30).status_code == 200
    assert mlflow.get_experiment_by_name("intruders") is None


@pytest.mark.parametrize(
    ("user", "says"),
    [
        ((EDITOR[0], "wrong-" + EDITOR[1]), "did not accept user 'editor' (401 unauthorized)"),
        (READER, "refused user 'reader' a write the run needs (403 permission denied)"),
    ],
    ids=["wrong-password", "reader"],
)
def test_who_may_not_write_is_stopped_before_training(
    project: Path, team: str, user: tuple[str, str], says: str
) -> None:
    before = len(runs_of_team())
    proc = run(["dvc", "repro", "train"], project, check=False, **as_user(user))
    assert proc.returncode != 0, proc.stdout
    assert f"the MLflow server {team}" in proc.stderr and says in proc.stderr, proc.stderr
    if user == READER:
        assert f"EDIT on experiment '{EXPERIMENT}'" in proc.stderr
    assert "Epoch 1/" not in proc.stdout + proc.stderr  # it never trained
    assert len(runs_of_team()) == before
    assert not (project / "models/model.keras").exists()


def test_an_editor_lands_a_complete_run_and_no_credential_lands_anywhere(
    project: Path, team: str, tmp_path: Path
) -> None:
    proc = run(["dvc", "repro"], project, **as_user(EDITOR))
    (single,) = runs_of_team()
    client = mlflow.MlflowClient()
    run_id = single.info.run_id
    assert single.info.status == "FINISHED" and single.data.metrics["test_accuracy"] > 0.8
    assert len(client.get_metric_history(run_id, "val_accuracy")) == 1
    figures = {a.path for a in client.list_artifacts(run_id, "figures")}
    assert "figures/confusion_matrix.png" in figures
    assert mlflow.search_logged_models(
        experiment_ids=[single.info.experiment_id], output_format="list"
    )
    (version,) = client.search_model_versions(f"name = '{MODEL}'")
    assert version.run_id == run_id

    # The editor's password: nowhere in what the run recorded, printed or wrote.
    secret = EDITOR[1]
    everywhere = {
        "params": repr(single.data.params),
        "tags": repr(single.data.tags),
        "metrics": repr(single.data.metrics),
        "model version": repr(version),
        "stdout": proc.stdout,
        "stderr": proc.stderr,
    }
    assert not [where for where, text in everywhere.items() if secret in text]
    downloaded = Path(client.download_artifacts(run_id, "", str(tmp_path / "artifacts")))
    files = [p for p in downloaded.rglob("*") if p.is_file()]
    assert len(files) >= 8
    local = [
        p
        for p in project.rglob("*")
        if p.is_file() and ".git" not in p.parts and "data" not in p.parts
    ]
    leaked = [p for p in files + local if secret.encode() in p.read_bytes()]
    assert not leaked
    assert secret not in (project / "params.yaml").read_text()


def test_eight_jobs_log_to_the_team_server_at_once(project: Path, team: str) -> None:
    """A sweep of 8 jobs on 8 joblib workers, all logging to the server at the same time."""
    hidden = ",".join(str(h) for h in range(8, 40, 4))
    sweep = [
        "python", "-m", "pipeline.sweep", "-m", f"model.hidden_units={hidden}",
        "hydra/launcher=joblib", "hydra.launcher.n_jobs=8", "train.max_examples=500",
        "train.epochs=2", "tracking=server", f"tracking.uri={team}",
        "tracking.experiment_name=team-sweep", f"tracking.registered_model={MODEL}",
    ]  # fmt: skip
    proc = run(sweep, project, **as_user(EDITOR))
    assert "8 runs, 8 configurations" in proc.stdout and not (project / "mlflow.db").exists()
    (parent,), children = sweep_runs(mlflow.get_tracking_uri(), "team-sweep")
    assert parent.info.status == "FINISHED" and len(children) == 8
    for child in children:
        assert_complete_child(child, parent.info.run_id, epochs=2, examples=500)
    # The best configuration is registered; compare reads the same server.
    best = max(children, key=lambda c: c.data.metrics["val_accuracy"])
    versions = mlflow.MlflowClient().search_model_versions(f"name = '{MODEL}'")
    assert best.info.run_id in {v.run_id for v in versions}
    compare = ["python", "-m", "pipeline.compare", "--experiment", "team-sweep"]
    board = run(compare, project, **as_user(READER))  # reading is enough
    listed = {line.split()[0] for line in board.stdout.splitlines()[2:]}
    assert listed == {c.info.run_name for c in children}
