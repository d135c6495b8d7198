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
