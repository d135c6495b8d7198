"""A dataset's prepared splits as shards: written by preprocess, read by NumPy. No TensorFlow here
(core/streaming.py reads the same files through tf.data).

`data/processed/` holds, per split, a few files `<split>-<k>.npy` of about `data.shard_mb`
megabytes each, and `manifest.json`. Each shard is a NumPy array of fixed-size records, a
label byte then the picture's pixels, uint8, (height, width, channels): NumPy reads it with
`np.load` (memory-mapped, no pickles), TensorFlow as fixed-length records after its header.
The manifest says the picture shape, the classes, each split's examples per class, and per
shard its examples, examples per class, size and SHA-256; every shard is checked against it
before it is used. The same pictures, labels and order give the same bytes, run after run.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import DataError

FORMAT = "mnist-pipeline shards 1"
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
CHUNK_BYTES = 4 << 20  # of pictures read at a time: memory does not grow with the split


def record_dtype(shape: Sequence[int]) -> np.dtype:
    """One example: its label, then its pixels (height, width, channels)."""
    return np.dtype([("label", "u1"), ("image", "u1", tuple(shape))])


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.npy"


class ShardWriter:
    """Writes one split's examples, in the order they come, into shards of `shard_bytes` (at
    least one example each) in `directory`; `close()` returns the split's manifest entry.
    Holds one shard's records in memory at a time."""

    def __init__(
        self,
        directory: Path,
        split: str,
        shape: Sequence[int],
        classes: int,
        shard_bytes: int,
        shown: Path | None = None,
    ) -> None:
        self.directory, self.split, self.classes = Path(directory), split, classes
        self.shown = Path(shown or directory)  # the folder errors name (where it will be)
        self.dtype = record_dtype(shape)
        self.capacity = max(1, shard_bytes // self.dtype.itemsize)
        self._buffer = np.zeros(self.capacity, self.dtype)
        self._filled = 0
        self.shards: list[dict[str, Any]] = []

    def add(self, images: np.ndarray, labels: np.ndarray) -> None:
        """Append uint8 `images` (n, height, width, channels) with their `labels`."""
        images, labels = np.asarray(images, np.uint8), np.asarray(labels, np.uint8)
        start = 0
        while start < len(labels):
            take = min(self.capacity - self._filled, len(labels) - start)
            part = self._buffer[self._filled : self._filled + take]
            part["image"] = images[start : start + take].reshape(part["image"].shape)
            part["label"] = labels[start : start + take]
            self._filled += take
            start += take
            if self._filled == self.capacity:
                self._flush()

    def _flush(self) -> None:
        records = self._buffer[: self._filled]
        path = self.directory / shard_name(self.split, len(self.shards))
        header = io.BytesIO()  # np.save's header, then the records as they are
        fmt = np.lib.format
        fmt.write_array_header_1_0(header, fmt.header_data_from_array_1_0(records))
        body = memoryview(np.ascontiguousarray(records)).cast("B")
        try:
            with path.open("wb") as fh:
                fh.write(header.getvalue())
                fh.write(body)
        except OSError as exc:
            exc.filename = str(self.shown / path.name)
            raise
        digest = hashlib.sha256(header.getvalue())
        digest.update(body)
        counts = np.bincount(records["label"], minlength=self.classes)
        self.shards.append(
            {
                "file": path.name,
                "examples": int(len(records)),
                "per_class": {str(c): int(n) for c, n in enumerate(counts)},
                "bytes": len(header.getvalue()) + len(body),
                "sha256": digest.hexdigest(),
            }
        )
        self._filled = 0

    def close(self) -> dict[str, Any]:
        """Write what is left; the split's entry: examples, per class, its shards."""
        if self._filled or not self.shards:
            self._flush()
        counts = np.zeros(self.classes, dtype=np.int64)
        for shard in self.shards:
            counts += [shard["per_class"][str(c)] for c in range(self.classes)]
        return {
            "examples": int(counts.sum()),
            "per_class": {str(c): int(n) for c, n in enumerate(counts)},
            "shards": self.shards,
        }


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class Writing:
    """A new data/processed/ being written: into a temporary folder beside it, which replaces
    it only when `commit` is called with the manifest. Leaving the block without committing
    (an error, an interrupt) removes the temporary folder and leaves the old one as it was."""

    def __init__(self, directory: Path) -> None:
        self.final = Path(directory)
        self.folder = self.final.with_name(f".{self.final.name}.{os.getpid()}.tmp")

    def __enter__(self) -> Writing:
        shutil.rmtree(self.folder, ignore_errors=True)
        try:
            self.folder.mkdir(parents=True)
        except OSError as exc:
            exc.filename = str(self.final)
            raise
        return self

    def writer(self, split: str, shape: Sequence[int], classes: int, shard_mb: int) -> ShardWriter:
        return ShardWriter(self.folder, split, shape, classes, shard_mb << 20, self.final)

    def commit(self, manifest: dict[str, Any]) -> None:
        text = json.dumps({"format": FORMAT, **manifest}, indent=1) + "\n"
        (self.folder / MANIFEST).write_text(text, encoding="utf-8")
        shutil.rmtree(self.final, ignore_errors=True)
        os.replace(self.folder, self.final)

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def split_digest(entry: dict[str, Any]) -> str:
    """The SHA-256 that stands for a split: of its manifest entry, which holds every shard's."""
    return hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()


@functools.cache
def read_manifest(directory: Path) -> dict[str, Any]:
    """data/processed/manifest.json, checked: its format, shape and splits' shard lists."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path} not found; run `uv run dvc repro preprocess` first.")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        shape = [int(n) for n in manifest["shape"]]
        ok = manifest.get("format") == FORMAT and len(shape) == 3 and min(shape) > 0
        ok = ok and all(isinstance(manifest["splits"][s]["shards"], list) for s in SPLITS)
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"{path} is not a manifest preprocess writes ({exc}); run `uv run dvc repro "
            "preprocess` again."
        ) from None
    if not ok:
        raise DataError(
            f"{path} is not a manifest of format {FORMAT!r} with a [height, width, channels] "
            "shape and the splits train, val and test; run `uv run dvc repro preprocess`."
        )
    return manifest


@dataclass(frozen=True)
class Shards:
    """One split of data/processed/: its examples read from its shards, each checked against
    the manifest (size, SHA-256, record layout) the first time it is opened in a process."""

    directory: Path
    split: str

    @property
    def entry(self) -> dict[str, Any]:
        return read_manifest(self.directory)["splits"][self.split]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of its pictures."""
        h, w, c = read_manifest(self.directory)["shape"]
        return (h, w, c)

    def __len__(self) -> int:
        return int(self.entry["examples"])

    @property
    def digest(self) -> str:
        return split_digest(self.entry)

    @property
    def nbytes_float(self) -> int:
        """Its pixels' size as float32, the way training holds a split in memory."""
        return len(self) * int(np.prod(self.shape)) * 4

    def files(self) -> list[Path]:
        return [self.directory / shard["file"] for shard in self.entry["shards"]]

    def records(self, index: int) -> np.ndarray:
        """Shard `index`'s records, memory-mapped (nothing is read until used)."""
        return _checked_records(self.directory, self.split, index)

    def header_bytes(self, index: int) -> int:
        return int(self.records(index).offset)

    def chunk(self) -> int:
        """Examples in CHUNK_BYTES of pictures (at least one)."""
        return max(1, CHUNK_BYTES // int(np.prod(self.shape)))

    def batches(
        self, size: int | None = None, limit: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(uint8 images, labels) of at most `size` examples at a time (`chunk()` by default),
        in order, the first `limit` examples (all with None). Each is read from its file, not
        mapped: only one batch is ever in memory."""
        size = size or self.chunk()
        left = len(self) if limit is None else min(limit, len(self))
        for index in range(len(self.entry["shards"])):
            records = self.records(index)  # checked; its header's length
            for start in range(0, len(records), size):
                if left <= 0:
                    return
                count = min(size, left, len(records) - start)
                part = np.fromfile(
                    self.files()[index],
                    dtype=records.dtype,
                    count=count,
                    offset=records.offset + start * records.dtype.itemsize,
                )
                left -= count
                yield part["image"].copy(), part["label"].copy()

    def labels(self, limit: int | None = None) -> np.ndarray:
        return np.concatenate([y for _, y in self.batches(None, limit)] or [np.zeros(0, "u1")])

    def take(self, indices: Sequence[int]) -> np.ndarray:
        """The uint8 images at `indices` (in the split's order), for figures."""
        out = np.zeros((len(indices), *self.shape), dtype=np.uint8)
        starts = np.cumsum([0] + [s["examples"] for s in self.entry["shards"]])
        for k, i in enumerate(indices):
            shard = int(np.searchsorted(starts, i, side="right") - 1)
            out[k] = self.records(shard)[i - starts[shard]]["image"]
        return out

    def whole(self, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """All its examples (the first `limit`) as float32 images in 0-1 and labels."""
        n = len(self) if limit is None else min(limit, len(self))
        x = np.empty((n, *self.shape), dtype=np.float32)
        y = np.empty(n, dtype=np.uint8)
        at = 0
        for images, labels in self.batches(None, n):
            x[at : at + len(labels)] = images
            y[at : at + len(labels)] = labels
            at += len(labels)
        x /= np.float32(255)
        return x, y


def picture_shape(shape: Sequence[int | None]) -> tuple[int, int, int]:
    """(height, width, channels) of images of `shape` (a model's input shape or an array's,
    without the batch dimension); two sides alone (older models' input) are one channel."""
    h, w, *c = shape
    return (int(h), int(w), int(c[0]) if c else 1)


def scale(images: np.ndarray) -> np.ndarray:
    """uint8 pixels to float32 0-1: x / 255, the models' input."""
    return images.astype(np.float32) / np.float32(255)


@functools.cache
def _checked_records(directory: Path, split: str, index: int) -> np.ndarray:
    manifest = read_manifest(directory)
    shard = manifest["splits"][split]["shards"][index]
    path = directory / shard["file"]
    if not path.is_file():
        raise DataError(f"{path} not found; run `uv run dvc repro preprocess` (or `dvc pull`).")
    size = path.stat().st_size
    if size != shard["bytes"] or sha256_of(path) != shard["sha256"]:
        raise DataError(
            f"{path} is not the shard the manifest lists ({size} bytes, SHA-256 differs from "
            f"{shard['sha256'][:12]}...); it was changed or cut short. Run `uv run dvc repro "
            "preprocess` again (or `dvc checkout data/processed`)."
        )
    try:
        records = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{path} is not a NumPy shard: {exc}") from None
    expected = record_dtype(manifest["shape"])
    if records.dtype != expected or records.shape != (shard["examples"],):
        raise DataError(
            f"{path} holds {records.shape} records of {records.dtype}, the manifest says "
            f"{shard['examples']} of {expected}; run `uv run dvc repro preprocess` again."
        )
    return records
