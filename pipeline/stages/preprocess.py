"""Stage preprocess: parse the IDX files, scale pixels to 0-1, split validation from train.

Inputs: data/raw/ (from fetch); `data.files`, `data.val_fraction` and `seed` from params.yaml.
A folder dataset's pictures are split first: `data.test_fraction` of each class is the test set.
Outputs: data/processed/{train,val,test}.npz (x: float32 images of `data.image_size` in 0-1,
y: uint8 labels)
and reports/data.json (examples per class per split).
Command: `uv run dvc repro preprocess` (or `uv run python -m pipeline.preprocess`).
"""

from __future__ import annotations

import sys

from pipeline.core.config import load_params
from pipeline.core.data import (
    class_counts,
    read_mnist_pair,
    save_split,
    scale,
    split_by_class,
    split_validation,
    too_small,
    write_json,
)
from pipeline.core.errors import command_parser, run_cli
from pipeline.core.paths import DATA_REPORT, PROCESSED_DIR, RAW_DIR, project_root


def main(argv: list[str]) -> None:
    command_parser("preprocess", __doc__).parse_args(argv)
    cfg = load_params()
    root = project_root()
    files = {key: root / RAW_DIR / name for key, name in cfg.data.raw_files.items()}
    n, shape = len(cfg.data.class_names), tuple(cfg.data.image_size)
    if cfg.data.format == "folder":
        x, y = read_mnist_pair(files["images"], files["labels"], n, shape)
        (x_train, y_train), (x_test, y_test) = split_by_class(
            x, y, cfg.data.test_fraction, cfg.seed
        )
    else:
        x_train, y_train = read_mnist_pair(files["train_images"], files["train_labels"], n, shape)
        x_test, y_test = read_mnist_pair(files["test_images"], files["test_labels"], n, shape)
    train, val = split_validation(scale(x_train), y_train, cfg.data.val_fraction, cfg.seed)
    splits = {"train": train, "val": val, "test": (scale(x_test), y_test)}
    report = {}
    for split, (x, y) in splits.items():
        save_split(root / PROCESSED_DIR, split, x, y)
        report[split] = {"examples": len(y), "per_class": class_counts(y, n)}
        print(f"preprocess: {split}: {len(y)} examples -> {PROCESSED_DIR / split}.npz")
    (root / DATA_REPORT).parent.mkdir(parents=True, exist_ok=True)
    write_json(root / DATA_REPORT, report)
    if warning := too_small(report, cfg.data.class_names):
        print(f"preprocess: warning: {warning}", file=sys.stderr)


def cli() -> None:
    run_cli(main, sys.argv[1:])


if __name__ == "__main__":
    cli()
