"""A sweep job's outcome (pipeline/sweeps/job.py): its job.json once its models are done, a
model that failed failing the job with its reason, the sweep's list of failed jobs, and a lost
server named as such in one line."""

from __future__ import annotations

import json
from concurrent.futures import Future
from pathlib import Path

import pytest

from pipeline.core.errors import PipelineError
from pipeline.sweeps.job import _record, failures, reason


def done(error: BaseException | None = None) -> Future:
    future: Future = Future()
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
    return future


def test_a_job_whose_model_failed_is_failed_with_the_models_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    trained = {"job": 3, "overrides": "model.hidden_units=64", "status": "FINISHED",
               "val_accuracy": [0.97], "seconds": {"started": 1.0}}  # fmt: skip
    (tmp_path / "ok").mkdir()  # the job's folder
    ok = _record(dict(trained), [done(), done()], tmp_path / "ok")
    assert ok["status"] == "FINISHED" and "ended" in ok["seconds"]
    assert json.loads((tmp_path / "ok" / "job.json").read_text()) == ok

    failed = _record(dict(trained), [done(), done(PipelineError("the store is full"))], tmp_path)
    assert (failed["status"], failed["error"]) == ("FAILED", "the store is full")
    assert json.loads((tmp_path / "job.json").read_text())["status"] == "FAILED"
    assert "job 3 (model.hidden_units=64) failed: the store is full" in capsys.readouterr().err


def test_the_failed_jobs_are_listed_each_with_its_overrides_and_error() -> None:
    jobs = [
        {"job": 0, "overrides": "model.hidden_units=32", "status": "FINISHED"},
        {"job": 1, "overrides": "model.hidden_units=64", "status": "FAILED", "error": "NaN"},
        {"job": 2, "overrides": "model.hidden_units=0", "status": "FAILED", "error": "bad"},
    ]
    failed, said = failures(jobs)
    assert [j["job"] for j in failed] == [1, 2]
    assert said == (
        "\n2 of 3 jobs failed:\n  job 1 (model.hidden_units=64): NaN\n"
        "  job 2 (model.hidden_units=0): bad"
    )
    assert failures(jobs[:1]) == ([], "")


def test_a_server_that_stopped_answering_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    lost = ConnectionError(
        "API request to http://10.1.2.1:5000/api/2.0/mlflow/runs/log-batch failed with "
        "exception HTTPConnectionPool(host='10.1.2.1', port=5000): Max retries exceeded with "
        "url: /api/2.0/mlflow/runs/log-batch (Caused by NewConnectionError('Connection refused'))"
    )
    said = reason(lost)
    assert said.startswith(
        "the MLflow tracking server stopped answering (connection refused at "
        "http://10.1.2.1:5000/api/2.0/mlflow/runs/log-batch, after 7 retries)"
    )
    assert "\n" not in said and "pipeline.runs --cleanup" in said
    assert reason(PipelineError("no such split")) == "no such split"
    assert reason(ValueError("odd")) == "ValueError: odd"
