"""Fixtures: small IDX files, real MNIST, a trained model, a swept project, a browser, the stack.

The `slow` marker (pyproject.toml) is set on the tests that need a real training run on MNIST,
a server, a browser, a database or several processes; `uv run pytest -m "not slow"` runs the rest.
Test files run in parallel, one worker per CPU and one more (pytest-xdist); `-n 0` runs them one
by one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock

from helpers import (
    CHROMEDRIVER,
    CHROMIUM,
    chromium,
    copy_project,
    mirror,
    needs,
    run,
    team_stack,
)
from pipeline.core.config import compose, validate
from pipeline.core.data import write_idx
from pipeline.sweeps.finishing import NICENESS

# Fixtures that train on real MNIST or start a server, a browser or a database: a test that uses
# one, directly or through another fixture, is in the slow tier.
SLOW_FIXTURES = {"mnist", "model_file", "swept_project", "prepared", "stack", "browser"}
# The longest files first (as measured in CI): pytest-xdist (`-n auto --dist loadfile
# --no-loadscope-reorder`, pyproject.toml) hands each file to one worker in this order, so the
# short ones fill in around them and the workers end together.
LONGEST_FIRST = (
    "test_hosts.py", "test_stack.py", "test_scaling.py", "test_sweep.py", "test_colour.py",
    "test_cluster.py", "test_reproduce.py",
    "test_team_server.py", "test_slurm.py", "test_faults.py", "test_model.py",
    "test_sweep_dvc.py", "test_datasets.py", "test_predict.py", "test_search.py",
    "test_pipeline_e2e.py", "test_dvc_remote.py", "test_stack_tls.py", "test_tracking.py",
    "test_app.py", "test_ui.py", "test_launchers.py",
)  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    """The tests run at the niceness of a sweep's background evaluation (NICENESS). Niceness
    holds across the machine: below the other workers' training, a sweep's background would
    wait for all of it, and its test with it, minutes at a time."""
    os.nice(max(0, NICENESS - os.nice(0)))


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one worker more than the CPUs. The tests wait on servers, browsers and the
    processes they start about a fifth of the time, which the extra worker fills."""
    return (os.cpu_count() or 1) + 1


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order kept within


@pytest.fixture
def small_mnist(tmp_path: Path) -> Path:
    """A folder with the four MNIST file names holding small random IDX data."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "small-mnist"
    folder.mkdir()
    for prefix, n in (("train", 60), ("t10k", 20)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    return folder


@pytest.fixture
def default_params() -> dict:
    return compose()


@pytest.fixture
def default_config():
    return validate(compose())


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """A headless Chromium for a module's tests. Under `.ci/run` (CI set) a missing browser
    fails the test; elsewhere it skips, saying why."""
    needs(CHROMIUM, "chromium")
    needs(CHROMEDRIVER, "chromium-driver")
    driver = chromium()
    yield driver
    driver.quit()


def shared(factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]) -> Path:
    """A folder all the test session's workers share: the first to ask for it runs
    `make(folder)`, the others wait for it and reuse it (pytest-xdist's own recipe for a
    session fixture made once)."""
    base = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the folder above the workers' own
    folder = base / name
    with FileLock(f"{folder}.lock"):
        if not (folder / ".made").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            (folder / ".made").touch()
    return folder


@pytest.fixture(scope="session")
def swept_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose store holds one 2-job sweep (hidden units 16 and 32, 1 epoch, 1,000
    digits): real runs with figures, for the pages that show runs. Made once for all workers:
    read it, do not change it."""

    def make(folder: Path) -> None:
        project = copy_project(folder / "project")
        run(["dvc", "repro", "preprocess"], project)
        sweep = ["python", "-m", "pipeline.sweep", "-m", "model.hidden_units=16,32"]
        run([*sweep, "train.epochs=1", "train.max_examples=1000"], project)

    return shared(tmp_path_factory, "swept", make) / "project"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project copy with its data prepared (`dvc repro preprocess`) and no store yet, for the
    sweeps of one test file."""
    root = copy_project(tmp_path_factory.mktemp("prepared"))
    run(["dvc", "repro", "preprocess"], root)
    assert not (root / "mlflow.db").exists()
    return root


@pytest.fixture(scope="session")
def mnist(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Real MNIST from MNIST_MIRROR (else the public mirrors), read into arrays."""
    from pipeline.core.data import read_mnist_pair
    from pipeline.core.download import fetch_file, sources

    cfg = validate(compose([]))
    raw = tmp_path_factory.mktemp("raw")
    places = sources(cfg.data.mirrors, os.environ.get("MNIST_MIRROR"))
    paths = {k: raw / s.name for k, s in cfg.data.files.items()}
    for spec in cfg.data.files.values():
        fetch_file(spec, raw, places, cfg.data.timeout_s)
    x, y = read_mnist_pair(paths["train_images"], paths["train_labels"], 10, (28, 28))
    xt, yt = read_mnist_pair(paths["test_images"], paths["test_labels"], 10, (28, 28))
    return {"x": x / np.float32(255), "y": y, "xt": xt / np.float32(255), "yt": yt}


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory, mnist: dict) -> Path:
    """The seed model trained for 2 epochs on 50,000 real digits, saved as a .keras file (made
    once for all workers)."""

    def make(folder: Path) -> None:
        from pipeline.core.model import build_mlp, compile_model, save_model
        from pipeline.core.training import Trainer

        cfg = validate(compose(["train.epochs=2"]))
        model = compile_model(build_mlp(128, 10, (28, 28)), cfg.train)
        Trainer().fit(
            model,
            (mnist["x"][:50_000], mnist["y"][:50_000]),
            (mnist["x"][50_000:], mnist["y"][50_000:]),
            cfg.train,
        )
        save_model(model, folder / "model.keras")

    return shared(tmp_path_factory, "model", make) / "model.keras"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """The team's stack (PostgreSQL, the S3 object store, the basic-auth MLflow server),
    started with `python -m pipeline.stack up` as a user starts it; yields its folder and the
    exports `up` printed (the server's URL, the `team` user and password)."""
    with team_stack(tmp_path_factory.mktemp("stack-user")) as started:
        yield started


@pytest.fixture
def serve() -> Iterator[Callable[..., str]]:
    """`serve(folder, mode="ok", prefix="")`: an HTTP mirror of `folder` on 127.0.0.1 for the
    test (see `helpers.MirrorHandler` for the modes); returns its URL."""
    with ExitStack() as stack:
        yield lambda folder, mode="ok", prefix="": stack.enter_context(
            mirror(folder, mode, prefix)
        )
