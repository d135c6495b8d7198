"""The team's stack over https (`pipeline.stack up --tls`): its CA made in the stack's folder,
trusted by MLflow's client (MLFLOW_TRACKING_SERVER_CERT_PATH), boto3 (AWS_CA_BUNDLE) and DVC
(`ssl_verify`, an https endpoint); `dvc repro` and `dvc push` go over TLS; a client without the
CA, and plain http, are refused."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import requests

from helpers import copy_project, run, team_stack
from pipeline.core.config import params_yaml_text

pytestmark = pytest.mark.slow  # PostgreSQL, an object store, an MLflow server, training


def refused_without_the_ca_and_over_http(url: str) -> None:
    """`url` (https) is refused to a client that does not trust the stack's CA, and its port
    serves nothing over plain http (the connection is closed, or the request answered 400,
    as Go's TLS servers answer it)."""
    with requests.Session() as session:
        session.trust_env = False  # certifi's CAs only, whatever the environment says
        with pytest.raises(requests.exceptions.SSLError):
            session.get(url, timeout=30)
        try:
            answer = session.get(url.replace("https://", "http://", 1), timeout=30)
        except requests.exceptions.ConnectionError:
            return
        assert (answer.status_code, "HTTPS" in answer.text) == (400, True), answer.text


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
        config_local = (project / ".dvc" / "config.local").read_text()
        assert f"ssl_verify = {ca}" in config_local
        (s3_url,) = re.findall(r"endpointurl = (\S+)", config_local)
        assert s3_url.startswith("https://127.0.0.1:")
        for url in (env["MLFLOW_TRACKING_URI"], s3_url):
            refused_without_the_ca_and_over_http(url)
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
