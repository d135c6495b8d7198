from types import SimpleNamespace

from pipeline.sweeps.summary import format_table, rank, row_of


def fake_run(
    name: str, val: float | None, test: float = 0.9, status: str = "FINISHED"
) -> SimpleNamespace:
    """The shape of an MLflow Run that row_of reads (built here, not mocked behaviour)."""
    metrics = (
        {}
        if val is None
        else {"test_accuracy": test, "val_accuracy": val, "test_loss": 0.1, "train_seconds": 2.0}
    )
    return SimpleNamespace(
        info=SimpleNamespace(run_name=name, status=status, run_id=f"id-{name}"),
        data=SimpleNamespace(
            params={
                "model.name": "mlp",
                "model.hidden_units": "64",
                "train.epochs": "3",
                "seed": "42",
            },
            metrics=metrics,
            tags={"sweep_overrides": "model.hidden_units=64", "failure_reason": ""},
        ),
    )


def test_rank_puts_the_best_on_validation_first_and_failed_last() -> None:
    rows = rank(
        [
            row_of(fake_run("b", 0.91, test=0.99)),
            row_of(fake_run("x", None, status="FAILED")),
            row_of(fake_run("a", 0.97, test=0.90)),
        ]
    )
    assert [r["run_name"] for r in rows] == ["a", "b", "x"]  # the test set never decides
    assert rows[0]["hidden_units"] == "64" and rows[0]["overrides"] == "model.hidden_units=64"


def test_format_table_aligns_columns() -> None:
    table = format_table(rank([row_of(fake_run("short", 0.9)), row_of(fake_run("x", None))]))
    header, rule, first, second = table.splitlines()
    assert header.startswith("run_name") and set(rule) <= {"-", " "}
    assert first.index("0.9000") == header.index("val_accuracy")
    assert " - " in second


def test_group_by_takes_any_column_of_a_runs_table(tmp_path) -> None:
    import subprocess
    import sys

    from helpers import ROOT, run_env

    table = tmp_path / "mine.csv"
    table.write_text(
        "run_name,config_id,val_accuracy,test_accuracy\n"
        "a,x,0.90,0.89\nb,x,0.92,0.90\nc,y,0.95,0.94\nd,y,0.97,0.95\n"
    )
    cmd = [sys.executable, "-m", "pipeline.compare", "--runs-csv", str(table)]
    proc = subprocess.run([*cmd, "--group-by", "config_id"], cwd=ROOT, env=run_env(),
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    first, second = [line for line in proc.stdout.splitlines() if "config_id=" in line]
    assert first.startswith("config_id=y") and " 2 " in first and second.startswith("config_id=x")
    bad = subprocess.run([*cmd, "--group-by", "nope"], cwd=ROOT, env=run_env(),
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 1 and "--group-by nope: no run has such a param or column" in (
        bad.stderr
    )
