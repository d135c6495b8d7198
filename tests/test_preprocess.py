import json
from pathlib import Path

import numpy as np
import yaml

from helpers import ROOT, run_stage
from pipeline.core.data import class_counts, sha256_file, split_validation
from pipeline.core.shards import Shards, scale


def test_scale_maps_bytes_to_unit_floats() -> None:
    out = scale(np.array([[0, 51, 255]], dtype=np.uint8))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.0, 0.2, 1.0]])


def test_split_is_seeded_disjoint_and_complete() -> None:
    x = np.arange(100).reshape(100, 1)
    y = np.arange(100) % 10
    (xt, yt), (xv, yv) = split_validation(x, y, 0.1, seed=7)
    assert len(xv) == 10 and len(xt) == 90
    assert set(xt.ravel()).isdisjoint(xv.ravel())
    assert sorted([*xt.ravel(), *xv.ravel()]) == list(range(100))
    np.testing.assert_array_equal(yv, xv.ravel() % 10)
    (_, _), (xv2, _) = split_validation(x, y, 0.1, seed=7)
    (_, _), (xv3, _) = split_validation(x, y, 0.1, seed=8)
    np.testing.assert_array_equal(xv, xv2)
    assert not np.array_equal(xv, xv3)


def test_class_counts_cover_every_digit() -> None:
    assert class_counts(np.array([0, 0, 9]), 10) == {
        "0": 2,
        **{str(c): 0 for c in range(1, 9)},
        "9": 1,
    }


def test_preprocess_stage_writes_splits_and_report(small_mnist: Path, tmp_path: Path) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for spec in params["data"]["files"].values():
        path = small_mnist / spec["name"]
        spec.update(bytes=path.stat().st_size, sha256=sha256_file(path))
    params["data"]["val_fraction"] = 0.25
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    (work / "data/raw").symlink_to(small_mnist)
    run_stage("preprocess", work)
    sizes = {s: len(Shards(work / "data/processed", s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 45, "val": 15, "test": 20}
    x, _ = Shards(work / "data/processed", "train").whole()
    assert x.dtype == np.float32 and x.shape[1:] == (28, 28, 1) and 0 <= x.min() <= x.max() <= 1
    # The test split is the test files, in their order, pixel for pixel.
    from pipeline.core.data import read_mnist_pair

    want, labels = read_mnist_pair(
        work / "data/raw/t10k-images-idx3-ubyte", work / "data/raw/t10k-labels-idx1-ubyte", 10,
        (28, 28),
    )  # fmt: skip
    got, got_labels = Shards(work / "data/processed", "test").whole()
    np.testing.assert_array_equal(got[..., 0], scale(want))
    np.testing.assert_array_equal(got_labels, labels)
    report = json.loads((work / "reports/data.json").read_text())
    assert {s: r["examples"] for s, r in report.items()} == sizes
    assert sum(report["val"]["per_class"].values()) == 15


def test_preprocess_names_a_corrupt_file(small_mnist: Path, tmp_path: Path) -> None:
    (small_mnist / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (work / "data/raw").symlink_to(small_mnist)
    proc = run_stage("preprocess", work, check=False)
    assert proc.returncode == 1
    assert "t10k-labels-idx1-ubyte: header says shape (9,)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_too_few_training_pictures_are_warned_about_with_their_counts() -> None:
    from pipeline.core.data import too_small

    def report(per_class: dict[str, int]) -> dict:
        split = {"examples": sum(per_class.values()), "per_class": per_class}
        return {"train": split, "val": split, "test": split}

    warning = too_small(report({"0": 9, "1": 40}), ["cats", "dogs"])
    assert warning and "1 of 2 classes have fewer than 10 training pictures (cats 9;" in warning
    assert "examples per split: train 49, val 49, test 49" in warning
    assert too_small(report({"0": 10, "1": 10}), ["cats", "dogs"]) is None
