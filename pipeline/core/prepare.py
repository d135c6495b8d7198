"""Preprocess's work: a dataset's pictures split into train, validation and test, written as
shards (core/shards.py) with their manifest. No TensorFlow here.

An IDX dataset (MNIST) is read whole (it is small): its test set is its own files, and a seeded
`data.val_fraction` of its training pictures is the validation split, each split in file order.
A folder dataset is split on its manifest's labels before any picture is decoded: a seeded
`data.test_fraction` of each class is the test set, then `data.val_fraction` of the rest; each
split is written in a seeded random order (a bounded shuffle buffer then mixes the classes),
decoded on every core as it goes, so memory does not grow with the folder.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.config import Config
from pipeline.core.data import read_mnist_pair, split_by_class, split_validation
from pipeline.core.errors import DataError
from pipeline.core.paths import PROCESSED_DIR, RAW_DIR
from pipeline.core.shards import SPLITS, Writing


def prepare(cfg: Config, root: Path) -> dict[str, Any]:
    """Write data/processed/ under `root` for `cfg`'s dataset; return its manifest."""
    data = cfg.data
    raw = {key: root / RAW_DIR / name for key, name in data.raw_files.items()}
    with Writing(root / PROCESSED_DIR) as writing:
        if data.format == "folder":
            source = read_source(raw["source"])
            manifest = _write_folder(cfg, source, writing)
        else:
            manifest = _write_idx(cfg, raw, writing)
        writing.commit(manifest)
    return manifest


def read_source(path: Path) -> dict[str, Any]:
    """A folder dataset's data/raw/folder.json, as the fetch stage wrote it."""
    try:
        source = json.loads(path.read_text(encoding="utf-8"))
        ok = isinstance(source["files"], dict) and source["color"] in ("rgb", "grayscale")
    except FileNotFoundError:
        raise DataError(f"{path} not found; run `uv run dvc repro fetch` first.") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"{path} is not what the fetch stage writes ({exc}); fetch again."
        ) from None
    if not ok:
        raise DataError(
            f"{path} is not what the fetch stage writes; run `uv run dvc repro fetch`."
        )
    return source


def _write_idx(cfg: Config, raw: dict[str, Path], writing: Writing) -> dict[str, Any]:
    n, shape = len(cfg.data.class_names), tuple(cfg.data.image_size)
    x_train, y_train = read_mnist_pair(raw["train_images"], raw["train_labels"], n, shape)
    test = read_mnist_pair(raw["test_images"], raw["test_labels"], n, shape)
    train, val = split_validation(x_train, y_train, cfg.data.val_fraction, cfg.seed)
    splits = {}
    for split, (x, y) in zip(SPLITS, (train, val, test), strict=True):
        writer = writing.writer(split, (*shape, 1), n, cfg.data.shard_mb)
        writer.add(x[..., None], y)
        splits[split] = writer.close()
    return _manifest(cfg, "grayscale", splits, [])


def _write_folder(cfg: Config, source: dict[str, Any], writing: Writing) -> dict[str, Any]:
    from pipeline.core.folder import bad_picture, decode, labels_of, settings_of

    data = cfg.data
    if source["classes"] != data.class_names:
        raise DataError(
            f"data/raw/folder.json lists the classes {source['classes']}, the config "
            f"{data.class_names}; run `uv run dvc repro fetch` again."
        )
    files, labels = labels_of(source)
    members = np.arange(len(files))
    (rest, rest_y), (test, _) = split_by_class(members, labels, data.test_fraction, cfg.seed)
    (train, _), (val, _) = split_validation(rest, rest_y, data.val_fraction, cfg.seed)
    orders = {
        split: chosen[np.random.default_rng([cfg.seed, k]).permutation(len(chosen))]
        for k, (split, chosen) in enumerate(zip(SPLITS, (train, val, test), strict=True))
    }
    settings = settings_of(data, source["color"])
    shape = (*settings.size, settings.channels)
    writers = {s: writing.writer(s, shape, len(data.class_names), data.shard_mb) for s in SPLITS}
    sequence = np.concatenate([orders[s] for s in SPLITS])
    owner = np.repeat(np.arange(len(SPLITS)), [len(orders[s]) for s in SPLITS])
    skipped = list(source.get("skipped", []))
    at = 0
    for decoded in decode(
        Path(source["path"]),
        [files[i] for i in sequence],
        [source["files"][files[i]] for i in sequence],
        settings,
    ):
        span = np.arange(at, at + len(decoded.kept))
        for k in np.flatnonzero(~decoded.kept):
            rel, why = files[sequence[span[k]]], decoded.reasons[k]
            if data.on_bad_picture != "skip":
                raise DataError(bad_picture(data, rel, why))
            skipped.append({"file": rel, "reason": why})
            print(f"preprocess: skipped {rel}: {why}", file=sys.stderr)
        for s, split in enumerate(SPLITS):
            mine = (owner[span] == s) & decoded.kept
            if mine.any():
                writers[split].add(decoded.images[mine], labels[sequence[span[mine]]])
        at += len(decoded.kept)
    splits = {split: writers[split].close() for split in SPLITS}
    return _manifest(cfg, source["color"], splits, skipped)


def _manifest(
    cfg: Config, color: str, splits: dict[str, Any], skipped: list[dict[str, str]]
) -> dict[str, Any]:
    height, width = cfg.data.image_size
    return {
        "dataset": cfg.data.name,
        "shape": [height, width, 3 if color == "rgb" else 1],
        "color": color,
        "classes": cfg.data.class_names,
        "splits": splits,
        "skipped": skipped,
    }


def data_report(manifest: dict[str, Any]) -> dict[str, Any]:
    """reports/data.json: examples and examples per class of each split."""
    return {
        split: {"examples": entry["examples"], "per_class": entry["per_class"]}
        for split, entry in manifest["splits"].items()
    }


def shards_line(manifest: dict[str, Any]) -> Iterator[str]:
    """What preprocess says of each split."""
    h, w, c = manifest["shape"]
    for split, entry in manifest["splits"].items():
        size = sum(s["bytes"] for s in entry["shards"]) / 2**20
        yield (
            f"preprocess: {split}: {entry['examples']} examples of {h}x{w}x{c} -> "
            f"{len(entry['shards'])} shard(s), {size:.1f} MB in {PROCESSED_DIR}/"
        )
