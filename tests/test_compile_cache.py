"""XLA's compile cache (core/compile_cache.py): where it is, when it is used, what a process
that loads compiled steps from it trains, and what an unreadable entry does."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT
from pipeline.core import compile_cache

TRAIN_SCRIPT = """
import numpy as np
from pipeline.core.config import compose, validate
from pipeline.core.model import build_mlp, compile_model, weights_sha256
from pipeline.core.training import Trainer, set_determinism
cfg = validate(compose(["train.epochs=2", "train.batch_size=16"]))
set_determinism(cfg.seed, 2, 1)
rng = np.random.default_rng(0)
x, y = rng.random((200, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, 200)
model = compile_model(build_mlp(32, 10, (28, 28, 1)), cfg.train)
Trainer().fit(model, (x[:150], y[:150]), (x[150:], y[150:]), cfg.train)
print(weights_sha256(model))
"""


def train(cache: str) -> subprocess.CompletedProcess:
    env = {**os.environ, compile_cache.CACHE_ENV: cache}
    env.pop(compile_cache.XLA_FLAGS_ENV, None)
    return subprocess.run(
        [sys.executable, "-c", TRAIN_SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        errors="replace",  # TensorFlow logs a damaged entry's bytes
    )


def test_the_folder_is_per_user_and_machine_kind_or_as_set(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv(compile_cache.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    default = compile_cache.folder()
    assert default.parent == tmp_path / "mnist-pipeline" / "xla"
    from importlib.metadata import version

    assert default.name.startswith(f"{version('tensorflow')}-")
    monkeypatch.setenv(compile_cache.CACHE_ENV, str(tmp_path / "mine"))
    assert compile_cache.folder() == tmp_path / "mine"
    monkeypatch.setenv(compile_cache.CACHE_ENV, "off")
    assert compile_cache.folder() is None


def test_enable_names_the_folder_to_xla_once(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(compile_cache.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(compile_cache.XLA_FLAGS_ENV, "--tf_xla_auto_jit=0")
    assert compile_cache.enable() == tmp_path / "cache"
    flags = os.environ[compile_cache.XLA_FLAGS_ENV]
    assert flags == f"--tf_xla_auto_jit=0 {compile_cache.CACHE_FLAG}={tmp_path / 'cache'}"
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700
    assert compile_cache.in_use() == tmp_path / "cache"
    assert compile_cache.enable() is None  # already named: left as it is
    assert os.environ[compile_cache.XLA_FLAGS_ENV] == flags


def test_a_folder_others_can_write_to_is_not_used(monkeypatch, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv(compile_cache.CACHE_ENV, str(shared))
    monkeypatch.delenv(compile_cache.XLA_FLAGS_ENV, raising=False)
    assert compile_cache.enable() is None
    assert compile_cache.XLA_FLAGS_ENV not in os.environ
    monkeypatch.setenv(compile_cache.CACHE_ENV, "off")
    assert compile_cache.enable() is None and compile_cache.in_use() is None


@pytest.mark.slow
def test_steps_loaded_from_the_cache_train_the_same_weights(tmp_path: Path) -> None:
    cache = tmp_path / "xla"
    first = train(str(cache))
    assert first.returncode == 0, first.stderr[-2000:]

    def entries() -> list[tuple[str, int, int]]:
        return sorted((p.name, p.stat().st_ino, p.stat().st_mtime_ns) for p in cache.iterdir())

    written = entries()
    assert len(written) == 2 and all(name.endswith(".pb") for name, _, _ in written)
    again = train(str(cache))  # the epoch (its last, smaller batch too), validation, loaded
    assert again.returncode == 0, again.stderr[-2000:]
    assert entries() == written  # nothing compiled and written anew
    without = train("off")
    assert first.stdout.split()[-1] == again.stdout.split()[-1] == without.stdout.split()[-1]

    for entry in cache.iterdir():  # damaged: XLA cannot parse them
        entry.write_bytes(os.urandom(3000))
    damaged = train(str(cache))
    assert damaged.returncode != 0
    assert f"XLA could not read what it compiled before from its cache {cache}" in damaged.stderr
    assert "it is cleared now: run the command again" in damaged.stderr
    assert list(cache.iterdir()) == []
    healed = train(str(cache))
    assert healed.returncode == 0, healed.stderr[-2000:]
    assert healed.stdout.split()[-1] == first.stdout.split()[-1]
