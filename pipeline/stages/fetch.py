"""Stage fetch: put the dataset's four IDX files, verified, in data/raw/.

Inputs: `data.mirrors`, `data.files`, `data.timeout_s`, `data.min_speed_kb_s` from params.yaml;
the environment variables DATA_MIRROR and `data.mirror_env` (MNIST_MIRROR for MNIST): a folder,
a file:// URL or an http(s) URL, tried before the mirrors.
Outputs: data/raw/<name> for each file, decompressed, its size and SHA-256 checked.
Command: `uv run dvc repro fetch` (or `uv run python -m pipeline.fetch`).

A file already present and verified is kept (see download.py for how files are fetched).
"""

from __future__ import annotations

import shutil
import sys

from pipeline.core.config import load_params
from pipeline.core.download import env_mirrors, fetch_file, sources
from pipeline.core.errors import command_parser, run_cli
from pipeline.core.paths import RAW_DIR, project_root


def main(argv: list[str]) -> None:
    command_parser("fetch", __doc__).parse_args(argv)
    cfg = load_params()
    raw_dir = project_root() / RAW_DIR
    raw_dir.mkdir(parents=True, exist_ok=True)
    places = sources(cfg.data.mirrors, *env_mirrors(cfg.data.mirror_env))
    for spec in cfg.data.files.values():
        origin = fetch_file(spec, raw_dir, places, cfg.data.timeout_s, cfg.data.min_speed_kb_s)
        print(f"fetch: {RAW_DIR / spec.name} ({spec.bytes} bytes, sha256 ok) <- {origin}")
    # Anything else in data/raw/ would become part of the DVC output; leftovers of older runs go.
    keep = {spec.name for spec in cfg.data.files.values()}
    for path in raw_dir.iterdir():
        if path.name not in keep:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def cli() -> None:
    run_cli(main, sys.argv[1:])


if __name__ == "__main__":
    cli()
