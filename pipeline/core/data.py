"""IDX files, splits, atomic writes, the prepared data and its digests. No TensorFlow here.

IDX is MNIST's format: a 4-byte magic number (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the values. MNIST uses unsigned bytes:
images are idx3 (count, 28, 28) and labels idx1 (count,).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from pipeline.core.errors import DataError
from pipeline.core.paths import PROCESSED_DIR, RAW_DIR
from pipeline.core.shards import MANIFEST, SPLITS, Shards

UBYTE = 0x08


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    if not path.is_file():
        raise DataError(f"{path} not found; run `uv run dvc repro` to make it.")
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: Path, data: Any, indent: int | None = 2) -> None:
    """Write `data` as JSON to `path` atomically: a crash mid-write leaves the old file or none,
    never half of one (a sweep reads job outcomes from such files)."""
    write_atomically(path, (json.dumps(data, indent=indent) + "\n").encode("utf-8"))


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file renamed over it: readers see the old
    file or the new one, never half of one."""
    with atomic_file(path) as fh:
        fh.write(data)


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write, renamed to `path` when the block ends without error. On an error
    (a full disk, say) the temporary file is removed and `path` is as it was; the error names
    `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as fh:
            yield fh
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename in (None, str(tmp), tmp):
            exc.filename = str(path)
        raise
    finally:
        if tmp.exists():  # on a read-only folder there is none, and unlink would fail
            tmp.unlink()


def check_model_file(path: Path, sha256: str | None = None) -> None:
    """`path` is a `.keras` file and, with `sha256`, has that digest (the one its run recorded)."""
    if path.suffix != ".keras" or not path.is_file():
        raise DataError(
            f"model file {path} not found (only .keras files are loaded); "
            "run `uv run dvc repro train` first."
        )
    if sha256 is not None and (actual := sha256_file(path)) != sha256:
        raise DataError(
            f"{path} has SHA-256 {actual}, but {sha256} was recorded when it was trained; "
            "it was changed since. Retrain with `uv run dvc repro --force train`."
        )


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file, atomically (a folder dataset's pictures; tests)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, UBYTE, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    write_atomically(path, header + array.tobytes())


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file of `ndim` dimensions, checking header against size."""
    raw = path.read_bytes()
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes, too short for an IDX header; fetch again.")
    zero, zero2, dtype, dims = struct.unpack(">BBBB", raw[:4])
    if (zero, zero2, dtype) != (0, 0, UBYTE) or dims != ndim:
        raise DataError(
            f"{path}: bad IDX magic number 0x{raw[:4].hex()}, expected 0x000008{ndim:02x} "
            f"(unsigned bytes, {ndim} dimensions); delete it and run the fetch stage again."
        )
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DataError(f"{path}: truncated header ({len(raw)} bytes); fetch it again.")
    shape = struct.unpack(f">{ndim}I", raw[4:header_len])
    expected = header_len + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(
            f"{path}: header says shape {shape} ({expected} bytes) but the file has {len(raw)} "
            "bytes; delete it and run the fetch stage again."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(shape)


def read_mnist_pair(
    images_path: Path,
    labels_path: Path,
    num_classes: int,
    shape: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Read matching image and label files, checking shapes, counts and label range."""
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    if images.shape[1:] != tuple(shape):
        raise DataError(
            f"{images_path}: images are {images.shape[1:]}, expected {tuple(shape)} "
            "(data.image_size)."
        )
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} "
            "labels; the files come from different sets. Fetch them again."
        )
    if labels.size and labels.max() >= num_classes:
        raise DataError(
            f"{labels_path}: label {labels.max()} is outside 0-{num_classes - 1} (data.classes "
            f"names {num_classes} classes)."
        )
    return images, labels


def split_validation(
    x: np.ndarray, y: np.ndarray, fraction: float, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Hold out a seeded random `fraction` of (x, y); return (train, val) in a fixed order."""
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = round(len(x) * fraction)
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    return (x[train], y[train]), (x[val], y[val])


def split_by_class(
    x: np.ndarray, y: np.ndarray, fraction: float, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Hold out a seeded random `fraction` of each class of (x, y) (a folder dataset's test
    set: every class in it); return (rest, held out) in a fixed order."""
    rng = np.random.default_rng(seed)
    held = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        held.extend(rng.permutation(members)[: round(len(members) * fraction)])
    out = np.zeros(len(y), dtype=bool)
    out[held] = True
    return (x[~out], y[~out]), (x[out], y[out])


def class_counts(y: np.ndarray, num_classes: int) -> dict[str, int]:
    return {str(c): int(n) for c, n in enumerate(np.bincount(y, minlength=num_classes))}


MIN_TRAINING_PER_CLASS = 10  # fewer: a model learns next to nothing, its scores say little


def too_small(report: dict[str, Any], class_names: list[str]) -> str | None:
    """A warning naming the counts when a class has fewer than MIN_TRAINING_PER_CLASS training
    examples (`report`: preprocess's, examples and per-class counts per split); else None."""
    train = report["train"]["per_class"]
    few = [f"{class_names[int(c)]} {n}" for c, n in train.items() if n < MIN_TRAINING_PER_CLASS]
    if not few:
        return None
    sizes = ", ".join(f"{split} {report[split]['examples']}" for split in report)
    return (
        f"too few pictures to learn from: {len(few)} of {len(class_names)} classes have fewer "
        f"than {MIN_TRAINING_PER_CLASS} training pictures ({', '.join(few)}; examples per "
        f"split: {sizes}). The model trains all the same, but what it learns and its scores "
        "mean little: add pictures to each class."
    )


@functools.cache
def prepared(root: Path, split: str) -> Shards:
    """A split of the project's prepared data (data/processed/, core/shards.py), its shards
    checked as they are opened.

    A job on a machine without it (a cluster node) takes it from the DVC cache or remote.
    """
    if not (root / PROCESSED_DIR / MANIFEST).exists():
        pulled = subprocess.run(
            [sys.executable, "-m", "dvc", "pull", str(PROCESSED_DIR)],
            cwd=root,
            capture_output=True,
            text=True,
        )
        if pulled.returncode != 0:
            raise DataError(
                f"{PROCESSED_DIR} is not on this machine and `dvc pull {PROCESSED_DIR}` failed "
                f"(exit {pulled.returncode}): {pulled.stderr.strip()[-500:]}. Configure the DVC "
                "remote (docs/scaling.md) or run `uv run dvc repro preprocess` here."
            )
    shards = Shards(root / PROCESSED_DIR, split)
    shards.entry  # noqa: B018  (the manifest read and checked now)
    return shards


def project_data_digests(root: Path, files: dict[str, str]) -> dict[str, str]:
    """SHA-256 of each raw file (`files`: key -> name in data/raw/, a dataset's `raw_files`)
    and each processed split under `root` (of its manifest entry, which lists its shards'
    SHA-256, each checked): the data a model was trained on. A folder dataset's folder.json
    holds its pictures' digests, so its digest stands for the folder. Computed once
    per process for the same files: the models of a sweep all train on the data `dvc repro`
    prepared, which they never change."""
    return dict(_digests_once(root, tuple(files.items())))


@functools.cache
def _digests_once(root: Path, files: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    raw = root / RAW_DIR
    digests = {f"raw.{key}": sha256_file(raw / name) for key, name in files}
    for split in SPLITS:
        shards = prepared(root, split)
        for index in range(len(shards.files())):
            shards.records(index)  # each shard checked against its SHA-256 in the manifest
        digests[f"processed.{split}"] = shards.digest
    return tuple(digests.items())
