"""Stage preprocess: split the dataset into train, validation and test, and write each as shards.

Inputs: data/raw/ (from fetch; a folder dataset's pictures from its folder, checked against the
digests fetch recorded); `data.*` and `seed` from params.yaml. An IDX dataset's test set is its
own files and a seeded `data.val_fraction` of its training pictures is held out; a folder's
pictures are split per class (`data.test_fraction`, then `data.val_fraction`, seeded) and decoded
on every core (core/prepare.py).
Outputs: data/processed/ (each split as shards of uint8 pictures with labels, and manifest.json:
shape, classes, counts, each shard's SHA-256; core/shards.py) and reports/data.json (examples
per class per split).
Command: `uv run dvc repro preprocess` (or `uv run python -m pipeline.preprocess`).
"""

from __future__ import annotations

import sys

from pipeline.core.config import load_params
from pipeline.core.data import too_small, write_json
from pipeline.core.errors import command_parser, run_cli
from pipeline.core.paths import DATA_REPORT, project_root
from pipeline.core.prepare import data_report, prepare, shards_line


def main(argv: list[str]) -> None:
    command_parser("preprocess", __doc__).parse_args(argv)
    cfg = load_params()
    root = project_root()
    manifest = prepare(cfg, root)
    print(*shards_line(manifest), sep="\n")
    report = data_report(manifest)
    (root / DATA_REPORT).parent.mkdir(parents=True, exist_ok=True)
    write_json(root / DATA_REPORT, report)
    if manifest["skipped"]:
        print(
            f"preprocess: {len(manifest['skipped'])} file(s) skipped (data.on_bad_picture: "
            "skip), listed in data/processed/manifest.json",
            file=sys.stderr,
        )
    if warning := too_small(report, cfg.data.class_names):
        print(f"preprocess: warning: {warning}", file=sys.stderr)


def cli() -> None:
    run_cli(main, sys.argv[1:])


if __name__ == "__main__":
    cli()
