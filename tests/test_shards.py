"""Prepared data as shards (core/shards.py, core/prepare.py, core/streaming.py): written in order
with a manifest, read back whole, in chunks or by index, checked against their digests; a folder
prepared twice gives the same bytes; bad pictures stop preprocess or are listed; a streamed
split gives every example once per epoch, in a seeded order, and trains to the same weights
twice. Pictures and arrays here are the test's own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import write_processed
from pipeline.core.config import compose, validate
from pipeline.core.data import write_json
from pipeline.core.errors import DataError
from pipeline.core.shards import Shards, ShardWriter, read_manifest, record_dtype, sha256_of


def examples(n: int, shape: tuple[int, ...] = (4, 5, 3), seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), np.uint8), rng.integers(0, 3, n).astype(np.uint8)


def test_a_split_is_written_in_order_into_shards_with_counts_and_digests(tmp_path: Path) -> None:
    x, y = examples(25)
    record = record_dtype((4, 5, 3)).itemsize
    writer = ShardWriter(tmp_path, "train", (4, 5, 3), 3, shard_bytes=10 * record)
    writer.add(x[:7], y[:7])
    writer.add(x[7:], y[7:])
    entry = writer.close()
    assert [s["examples"] for s in entry["shards"]] == [10, 10, 5]
    assert entry["examples"] == 25 and entry["per_class"] == {
        str(c): int((y == c).sum()) for c in range(3)
    }
    for k, shard in enumerate(entry["shards"]):
        part = y[10 * k : 10 * k + 10]
        assert shard["per_class"] == {str(c): int((part == c).sum()) for c in range(3)}
        assert shard["sha256"] == sha256_of(tmp_path / shard["file"])
        back = np.load(tmp_path / shard["file"], allow_pickle=False)  # NumPy reads it as it is
        np.testing.assert_array_equal(back["image"], x[10 * k : 10 * k + 10])


def test_a_split_reads_back_whole_in_chunks_by_index_and_limited(tmp_path: Path) -> None:
    x, y = examples(30)
    write_processed(
        tmp_path, {"train": (x, y), "val": (x[:5], y[:5]), "test": (x, y)}, ["a", "b", "c"]
    )
    shards = Shards(tmp_path / "data/processed", "train")
    assert len(shards) == 30 and shards.shape == (4, 5, 3)
    whole, labels = shards.whole()
    np.testing.assert_array_equal(whole, x.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(labels, y)
    chunks = list(shards.batches(7, limit=20))
    assert [len(c[1]) for c in chunks] == [7, 7, 6]
    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), x[:20])
    np.testing.assert_array_equal(shards.take([29, 0, 13]), x[[29, 0, 13]])
    np.testing.assert_array_equal(shards.labels(limit=4), y[:4])


def test_a_changed_or_missing_shard_is_refused_by_name(tmp_path: Path) -> None:
    x, y = examples(12)
    folder = write_processed(
        tmp_path, {s: (x, y) for s in ("train", "val", "test")}, ["a", "b", "c"]
    )
    shard = folder / "val-00000.npy"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # one pixel changed, size the same
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"val-00000.npy is not the shard the manifest lists"):
        Shards(folder, "val").whole()
    (folder / "test-00000.npy").unlink()
    with pytest.raises(DataError, match=r"test-00000.npy not found; run `uv run dvc repro"):
        Shards(folder, "test").labels()
    np.testing.assert_array_equal(Shards(folder, "train").labels(), y)  # the rest still reads
    (folder / "manifest.json").write_text('{"format": "something else"}')
    read_manifest.cache_clear()
    with pytest.raises(DataError, match="is not a manifest preprocess writes"):
        Shards(folder, "train").shape  # noqa: B018


# ---- a folder prepared --------------------------------------------------------------------


def folder_of_pictures(root: Path, per_class: int = 6) -> Path:
    """Two classes of small pictures of several kinds and sizes: RGBA PNGs, JPEGs, grey PNGs."""
    rng = np.random.default_rng(3)
    for label, name in enumerate(("cats", "dogs")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            size = (20 + 7 * i, 30 + 3 * i)
            pixels = rng.integers(0, 256, (*size, 4), np.uint8)
            pixels[..., label] = 255  # red cats, green dogs
            picture = Image.fromarray(pixels, "RGBA")
            if i % 3 == 0:
                picture.convert("RGB").save(root / name / f"{i}.jpg", quality=90)
            elif i % 3 == 1:
                picture.save(root / name / f"{i}.png")
            else:
                picture.convert("L").save(root / name / f"{i}.png")
    return root


def prepared_folder(project: Path, pictures: Path, *overrides: str) -> dict:
    from pipeline.core.folder import scan_folder
    from pipeline.core.prepare import prepare

    cfg = validate(
        compose(["data=folder", f"data.path={pictures}", "data.image_size=[12,10]", *overrides])
    )
    (project / "data/raw").mkdir(parents=True, exist_ok=True)
    write_json(project / "data/raw/folder.json", scan_folder(cfg.data))
    read_manifest.cache_clear()
    return prepare(cfg, project)


def test_a_folder_prepared_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    pictures = folder_of_pictures(tmp_path / "pics")
    first = prepared_folder(tmp_path / "one", pictures)
    second = prepared_folder(tmp_path / "two", pictures)
    assert first == second and first["shape"] == [12, 10, 3] and first["color"] == "rgb"
    one, two = (
        sorted((tmp_path / "one/data/processed").iterdir()),
        sorted((tmp_path / "two/data/processed").iterdir()),
    )
    assert [p.name for p in one] == [p.name for p in two]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, two, strict=True))
    counts = {s: first["splits"][s]["examples"] for s in ("train", "val", "test")}
    assert sum(counts.values()) == 12 and counts["test"] == 2  # a fifth of each class
    another = prepared_folder(tmp_path / "three", pictures, "seed=7")
    assert another["splits"] != first["splits"]  # the seed draws the splits and their order


@pytest.mark.parametrize("mode", ["error", "skip"])
def test_a_picture_cut_short_stops_preprocess_or_is_listed(mode: str, tmp_path: Path) -> None:
    pictures = folder_of_pictures(tmp_path / "pics")
    whole = (pictures / "dogs/1.png").read_bytes()
    (pictures / "dogs/1.png").write_bytes(whole[: len(whole) // 2])  # its header still reads
    project = tmp_path / "project"
    if mode == "error":
        with pytest.raises(DataError) as err:
            prepared_folder(project, pictures)
        assert f"data.path {pictures}: dogs/1.png is not a picture read here" in str(err.value)
        assert "data.on_bad_picture=skip" in str(err.value)
        assert sorted(p.name for p in (project / "data").iterdir()) == ["raw"]  # nothing half
        return
    manifest = prepared_folder(project, pictures, "data.on_bad_picture=skip")
    (skipped,) = manifest["skipped"]
    assert skipped["file"] == "dogs/1.png" and "truncated" in skipped["reason"], skipped
    assert sum(manifest["splits"][s]["examples"] for s in ("train", "val", "test")) == 11
    on_disk = json.loads((project / "data/processed/manifest.json").read_text())
    assert on_disk["skipped"] == manifest["skipped"]


# ---- streamed -----------------------------------------------------------------------------


def streamed_split(tmp_path: Path, n: int = 50, shard: int = 8):
    from pipeline.core.streaming import Streamed

    x, y = examples(n, (3, 3, 1))
    x[:, 0, 0, 0] = np.arange(n)  # each example names itself
    record = record_dtype((3, 3, 1)).itemsize
    writer = ShardWriter(tmp_path, "train", (3, 3, 1), 3, shard_bytes=shard * record)
    writer.add(x, y)
    entry = writer.close()
    manifest = {"format": "mnist-pipeline shards 1", "shape": [3, 3, 1],
                "splits": {s: entry for s in ("train", "val", "test")}}  # fmt: skip
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return Streamed(Shards(tmp_path, "train")), x


def epoch_order(streamed, seed: int, batch: int = 7, buffer: int = 10) -> list[int]:
    order = np.random.default_rng(seed).permutation(len(streamed.shards.files()))
    record = record_dtype((3, 3, 1)).itemsize
    batches = streamed.dataset(batch, buffer * record, order, seed)
    return [int(round(v * 255)) for x, _ in batches for v in x.numpy()[:, 0, 0, 0]]


def test_a_streamed_epoch_gives_every_example_once_in_a_seeded_order(tmp_path: Path) -> None:
    streamed, _ = streamed_split(tmp_path)
    first = epoch_order(streamed, 1)
    assert sorted(first) == list(range(50)) and first != list(range(50))
    assert epoch_order(streamed, 1) == first  # the same seed: the same order
    assert epoch_order(streamed, 2) != first
    from pipeline.core.streaming import Streamed

    limited = Streamed(streamed.shards, 20)
    assert sorted(epoch_order(limited, 1)) == list(range(20))  # the first 20 only
    assert limited.counts() == [8, 8, 4, 0, 0, 0, 0]


def test_training_on_a_streamed_split_is_the_same_twice(tmp_path: Path) -> None:
    """The seed fixes the shard order and the shuffle buffer's draws, hence every batch: two fits
    from the same seed give bit-identical weights."""
    import keras
    import tensorflow as tf

    from pipeline.core.model import build_mlp, compile_model, weights_sha256
    from pipeline.core.streaming import Streamed
    from pipeline.core.training import Trainer

    tf.config.experimental.enable_op_determinism()
    x, y = examples(300, (6, 6, 3))
    folder = write_processed(
        tmp_path, {s: (x, y) for s in ("train", "val", "test")}, ["a", "b", "c"]
    )

    def fit() -> str:
        cfg = validate(compose(["train.epochs=2", "train.batch_size=16"]))
        keras.utils.set_random_seed(0)  # as set_determinism does (thread counts aside)
        model = compile_model(build_mlp(8, 3, (6, 6, 3)), cfg.train)
        train, val = Streamed(Shards(folder, "train"), 250), Streamed(Shards(folder, "val"))
        history, _ = Trainer().fit(model, train, val, cfg.train)
        assert len(history["loss"]) == 2 and np.isfinite(history["val_loss"]).all()
        return weights_sha256(model)

    assert fit() == fit()
