"""XLA's compiled training steps kept on disk, so that a model compiles once per machine.

Compiling a model's training and validation steps takes about a second and a half, paid by every
process that trains it: each `dvc repro`, each sweep per configuration. TensorFlow keeps what it
compiled in a folder when told to (`--tf_xla_persistent_cache_directory`), and the next process
loads it in a fraction of that, the same machine code, so the same results. The folder is per
user and per machine kind: ~/.cache/mnist-pipeline/xla/<TensorFlow version>-<processor digest>
(under $XDG_CACHE_HOME if set). `PIPELINE_COMPILE_CACHE` names another folder, or `off`.

What it holds is machine code this project's processes compiled: it is used only from a folder
the user owns that no one else can write to, and never from the project or the MLflow store.
No Hydra or MLflow here; nothing here imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import os
import platform
import stat
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

CACHE_ENV = "PIPELINE_COMPILE_CACHE"
XLA_FLAGS_ENV = "TF_XLA_FLAGS"
CACHE_FLAG = "--tf_xla_persistent_cache_directory"
OFF = "off"


def _machine() -> str:
    """What compiled code depends on: the TensorFlow version and the processor's features."""
    features = platform.machine() + platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):  # x86, ARM
                features += line
                break
    except OSError:
        pass
    try:
        tf_version = version("tensorflow")
    except PackageNotFoundError:
        tf_version = "unknown"
    return f"{tf_version}-{hashlib.sha256(features.encode()).hexdigest()[:12]}"


def folder() -> Path | None:
    """The cache folder this process uses, or None (turned off)."""
    chosen = os.environ.get(CACHE_ENV, "")
    if chosen.lower() == OFF:
        return None
    if chosen:
        return Path(chosen).expanduser()
    home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(home) / "mnist-pipeline" / "xla" / _machine()


def _private(path: Path) -> bool:
    """Whether `path` is a folder of this user's that no one else can write to."""
    info = path.stat()
    mine = not hasattr(os, "getuid") or info.st_uid == os.getuid()
    return stat.S_ISDIR(info.st_mode) and mine and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def enable() -> Path | None:
    """Tell XLA to keep and reuse compiled steps in `folder()`; call before XLA first compiles
    in this process (it reads its flags once). Returns the folder, or None where the cache is
    off, the folder cannot be made or is not private, or TF_XLA_FLAGS already names one."""
    flags = os.environ.get(XLA_FLAGS_ENV, "")
    if CACHE_FLAG in flags:
        return None
    path = folder()
    if path is None:
        return None
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _private(path):
            return None
    except OSError:
        return None
    os.environ[XLA_FLAGS_ENV] = f"{flags} {CACHE_FLAG}={path}".strip()
    return path


def in_use() -> Path | None:
    """The folder XLA was told to use by `enable`, if any."""
    flags = os.environ.get(XLA_FLAGS_ENV, "").split()
    named = [f.split("=", 1)[1] for f in flags if f.startswith(f"{CACHE_FLAG}=")]
    return Path(named[-1]) if named else None


def clear(path: Path) -> None:
    """Remove the entries of the cache folder `path` (one XLA could not read): XLA keeps one
    file per compiled step there, nothing else."""
    for entry in path.iterdir():
        entry.unlink(missing_ok=True)
