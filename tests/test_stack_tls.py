"""The team's stack over https (`pipeline.stack up --tls`): its CA made in the stack's folder,
trusted by MLflow's client (MLFLOW_TRACKING_SERVER_CERT_PATH), boto3 (AWS_CA_BUNDLE) and DVC
(`ssl_verify`); `dvc repro` and `dvc push` go over TLS."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import copy_project, run, team_stack
from pipeline.core.config import params_yaml_text

pytestmark = pytest.mark.slow  # PostgreSQL, an object store, an MLflow server, training


def test_repro_and_push_over_https(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    (project / "params.yaml").write_text(
        params_yaml_text(["train.max_examples=2000", "train.epochs=1"])
    )
    run(["git", "commit", "-qam", "a quick run"], project)
    with team_stack(project, "--tls") as (folder, env):
        assert env["MLFLOW_TRACKING_URI"].startswith("https://127.0.0.1:")
        ca = folder / "tls" / "ca.pem"
        assert env["MLFLOW_TRACKING_SERVER_CERT_PATH"] == env["AWS_CA_BUNDLE"] == str(ca)
        assert (folder / "tls" / "server-key.pem").stat().st_mode & 0o077 == 0
        assert f"ssl_verify = {ca}" in (project / ".dvc" / "config.local").read_text()
        run(["dvc", "repro"], project, **env)
        metrics = json.loads((project / "reports" / "metrics.json").read_text())
        assert metrics["test_accuracy"] > 0.8
        pushed = run(["dvc", "push", "-r", "stack"], project)
        assert "pushed" in pushed.stdout

        from pipeline.stack.team import Stack

        client = Stack(folder).object_store.client()  # over https, trusting the stack's CA
        keys = [o["Key"] for o in client.list_objects_v2(Bucket="team-bucket")["Contents"]]
        assert any(k.startswith("dvc/") for k in keys)
        assert any(k.startswith("mlflow/") and k.endswith("model.keras") for k in keys)
        plain = run(["dvc", "push", "-r", "stack"], project, check=False)
        assert plain.returncode == 0  # nothing new: no upload, no error
