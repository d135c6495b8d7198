"""Stage fetch: put the dataset, verified, in data/raw/.

An IDX dataset (`data.format: idx`): its four files from `data.mirrors`, `data.files`,
`data.timeout_s`, `data.min_speed_kb_s`, and the environment variables DATA_MIRROR and
`data.mirror_env` (MNIST_MIRROR for MNIST): a folder, a file:// URL or an http(s) URL, tried
before the mirrors. Outputs data/raw/<name> for each file, decompressed, its size and SHA-256
checked; a file already present and verified is kept (see download.py).

A folder dataset (`data.format: folder`): data/raw/folder.json, the folder's manifest: the
classes, each picture's SHA-256, the folder's digest and its colour (`data.color`, or rgb when
any picture has colour). The pictures are read once, not decoded or copied: preprocess reads
them from the folder. A file that is not a PNG or JPEG picture stops it before anything is
written (with `data.on_bad_picture: skip`, it is listed and left out), as does a class with too
few pictures.

Command: `uv run dvc repro fetch` (or `uv run python -m pipeline.fetch`).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from pipeline.core.config import DataConfig, load_params
from pipeline.core.data import write_json
from pipeline.core.download import env_mirrors, fetch_file, sources
from pipeline.core.errors import command_parser, run_cli
from pipeline.core.paths import RAW_DIR, project_root


def main(argv: list[str]) -> None:
    command_parser("fetch", __doc__).parse_args(argv)
    cfg = load_params()
    raw_dir = project_root() / RAW_DIR
    raw_dir.mkdir(parents=True, exist_ok=True)
    if cfg.data.format == "folder":
        read_pictures(cfg.data, raw_dir)
    else:
        download(cfg.data, raw_dir)
    # Anything else in data/raw/ would become part of the DVC output; leftovers of older runs go.
    keep = set(cfg.data.raw_files.values())
    for path in raw_dir.iterdir():
        if path.name not in keep:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def download(data: DataConfig, raw_dir: Path) -> None:
    places = sources(data.mirrors or [], *env_mirrors(data.mirror_env))
    for spec in (data.files or {}).values():
        origin = fetch_file(spec, raw_dir, places, data.timeout_s, data.min_speed_kb_s)
        print(f"fetch: {RAW_DIR / spec.name} ({spec.bytes} bytes, sha256 ok) <- {origin}")


def read_pictures(data: DataConfig, raw_dir: Path) -> None:
    from pipeline.core.folder import scan_folder

    manifest = scan_folder(data)
    write_json(raw_dir / data.raw_files["source"], manifest)
    classes, files = manifest["classes"], manifest["files"]
    per_class = [sum(rel.split("/", 1)[0] == c for rel in files) for c in classes]
    counts = ", ".join(f"{c} {n}" for c, n in zip(classes, per_class, strict=True))
    print(
        f"fetch: {len(files)} pictures in {len(classes)} classes ({counts}) <- {data.path} "
        f"(sha256 {manifest['sha256'][:12]}) -> {RAW_DIR / data.raw_files['source']}"
    )
    for bad in manifest["skipped"]:
        print(f"fetch: skipped {bad['file']}: {bad['reason']}", file=sys.stderr)
    if data.color is None:
        why = (
            f"{manifest['colour_pictures']} of {len(files)} pictures have colour"
            if manifest["color"] == "rgb"
            else "no picture has colour"
        )
        other = "grayscale" if manifest["color"] == "rgb" else "rgb"
        print(f"fetch: color {manifest['color']} ({why}; set data.color={other} to change it)")


def cli() -> None:
    run_cli(main, sys.argv[1:])


if __name__ == "__main__":
    cli()
