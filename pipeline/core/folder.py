"""A folder of labelled pictures as a dataset: one subfolder per class, PNG or JPEG files of any
size and kind. No TensorFlow here.

The layout is the one Keras's `image_dataset_from_directory` and torchvision's `ImageFolder`
read: class names are the subfolders' names (sorted, unless `data.classes` orders them), a
class's pictures may sit in nested folders, hidden files and folders are left out.

`scan_folder` (the fetch stage) reads each file once to take its SHA-256 and its header (format,
size, colour), without decoding or keeping it: the manifest it returns lists every picture's
digest and stands for the folder in the run's provenance, and says whether the dataset is in
colour. `decode` (preprocess) reads the pictures again, checks each against its digest and
turns it into uint8 pixels (core/images.py), on every core, a bounded number at a time.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.core.config import DataConfig
from pipeline.core.errors import DataError
from pipeline.core.images import MAX_PIXELS, PNG_OR_JPEG, PictureSettings, read_picture

COLOUR_MODES = ("RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV")


def pictures(folder: Path) -> list[Path]:
    """The files below `folder` (nested folders too), hidden ones left out, in a fixed order."""
    found = []
    for path in sorted(folder.rglob("*")):
        hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)
        if path.is_file() and not hidden:
            found.append(path)
    return found


def min_per_class(test_fraction: float) -> int:
    """The fewest pictures a class may have: one for the test set and two for training and
    validation once `test_fraction` of them is held out."""
    n = 3
    while round(n * test_fraction) < 1 or n - round(n * test_fraction) < 2:
        n += 1
    return n


def settings_of(data: DataConfig, color: str) -> PictureSettings:
    """How `data`'s pictures are read, in `color` (its own, or the one its folder decided)."""
    height, width = data.image_size
    return PictureSettings(
        (height, width), color, data.resize or "stretch", data.background or "white"
    )


def _examine(path: Path) -> tuple[str, bool | None, str]:
    """A file's SHA-256, whether it is in colour (None: not a picture) and why not."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        head = fh.read(1 << 16)
        digest.update(head)
        while block := fh.read(1 << 20):
            digest.update(block)
    try:
        with Image.open(path, formats=PNG_OR_JPEG) as img:
            colour = img.mode in COLOUR_MODES or (img.mode in ("P", "PA") and _colour_palette(img))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return digest.hexdigest(), None, _why(exc)
    return digest.hexdigest(), colour, ""


def _colour_palette(img: Image.Image) -> bool:
    palette = np.asarray(img.getpalette() or [], dtype=np.int16).reshape(-1, 3)
    return bool((palette != palette[:, :1]).any())


def _why(exc: BaseException) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "not a PNG or JPEG picture"
    return str(exc).rstrip(".") or type(exc).__name__


def bad_picture(data: DataConfig, rel: str, reason: str) -> str:
    """The one line that names a bad file, what is wrong and what to do."""
    return (
        f"data.path {data.path}: {rel} is not a picture read here ({reason}); a class folder "
        "holds only PNG or JPEG pictures. Move it out of the folder, or set "
        "data.on_bad_picture=skip to leave such files out (they are listed)."
    )


def scan_folder(data: DataConfig, threads: int = 4) -> dict[str, Any]:
    """The manifest of folder dataset `data`: classes, each picture's SHA-256 (by path relative
    to the folder), the folder's digest, its colour (`data.color`, or rgb when any picture has
    colour) and the files skipped (with `data.on_bad_picture: skip`). Raises `DataError` naming
    the path and what is wrong: a class without enough pictures, a file that is not a picture."""
    root = Path(str(data.path))
    classes = data.class_names
    need = min_per_class(float(data.test_fraction or 0))
    files = [(name, path) for name in classes for path in pictures(root / name)]
    digests: dict[str, str] = {}
    skipped, coloured = [], 0
    with ThreadPoolExecutor(threads) as pool:  # hashing and reading headers wait on the disk
        for (_, path), (sha, colour, why) in zip(
            files, pool.map(_examine, [p for _, p in files]), strict=True
        ):
            rel = path.relative_to(root).as_posix()
            if colour is None:
                if data.on_bad_picture != "skip":
                    raise DataError(bad_picture(data, rel, why))
                skipped.append({"file": rel, "reason": why})
                continue
            digests[rel] = sha
            coloured += colour
    for name in classes:
        have = sum(rel.split("/", 1)[0] == name for rel in digests)
        if have < need:
            raise DataError(
                f"data.path {root}: class {name!r} has {have} picture(s); with "
                f"data.test_fraction {data.test_fraction} a class needs at least {need} (one "
                "for the test set, two for training and validation). Add pictures to "
                f"{root / name}/ or leave the class out."
            )
    listing = "".join(f"{rel}\0{sha}\n" for rel, sha in sorted(digests.items()))
    return {
        "path": str(root),
        "classes": classes,
        "pictures": len(digests),
        "sha256": hashlib.sha256(listing.encode()).hexdigest(),
        "color": data.color or ("rgb" if coloured else "grayscale"),
        "colour_pictures": coloured,
        "files": digests,
        "skipped": skipped,
    }


def labels_of(manifest: dict[str, Any]) -> tuple[list[str], np.ndarray]:
    """The manifest's pictures (relative paths, in order) and their labels (class folder)."""
    index = {name: label for label, name in enumerate(manifest["classes"])}
    files = sorted(manifest["files"], key=lambda rel: (index[rel.split("/", 1)[0]], rel))
    return files, np.asarray([index[rel.split("/", 1)[0]] for rel in files], dtype=np.uint8)


@dataclass(frozen=True)
class Decoded:
    """A run of pictures decoded: images (n, height, width, channels), and for each picture
    whether it was read (the others are left out, with why)."""

    images: np.ndarray
    kept: np.ndarray
    reasons: list[str]


def _decode_chunk(
    root: str, files: Sequence[str], digests: Sequence[str], settings: PictureSettings
) -> Decoded:
    """In a worker process: each file read once, its digest checked, decoded."""
    images = np.zeros((len(files), *settings.size, settings.channels), dtype=np.uint8)
    kept = np.zeros(len(files), dtype=bool)
    reasons = [""] * len(files)
    for k, (rel, sha) in enumerate(zip(files, digests, strict=True)):
        path = Path(root) / rel
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise DataError(
                f"data.path {root}: {rel} cannot be read ({exc.strerror}); it was there when "
                "the fetch stage ran. Run `uv run dvc repro` again."
            ) from None
        if hashlib.sha256(raw).hexdigest() != sha:
            raise DataError(
                f"data.path {root}: {rel} changed after the fetch stage recorded it (its "
                "SHA-256 differs); run `uv run dvc repro` again, which fetches it anew."
            )
        try:
            images[k] = read_picture(io.BytesIO(raw), settings, rel, MAX_PIXELS, PNG_OR_JPEG)
            kept[k] = True
        except DataError as exc:
            reasons[k] = str(exc).removeprefix(f"{rel}: ")
    return Decoded(images, kept, reasons)


def _ignore_interrupts() -> None:
    """A worker leaves Ctrl-C to the stage, which stops it (and says so once)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def decode(
    root: Path,
    files: Sequence[str],
    digests: Sequence[str],
    settings: PictureSettings,
    workers: int | None = None,
    chunk: int = 64,
) -> Iterator[Decoded]:
    """The pictures `files` (relative to `root`, with their SHA-256 `digests`) decoded on
    `workers` processes (every core by default), yielded in order a chunk at a time, with at
    most two chunks per worker in flight: memory does not grow with the folder."""
    workers = workers or os.cpu_count() or 1
    chunks = [(start, min(start + chunk, len(files))) for start in range(0, len(files), chunk)]
    if not chunks:
        return
    import multiprocessing
    import threading

    # Forked workers start at once; a process with threads (fork would copy their locks held)
    # starts them from a clean server instead.
    method = "fork" if threading.active_count() == 1 else "forkserver"
    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_ignore_interrupts) as pool:
        pending: list[Future] = []
        ahead = 2 * workers
        submitted = 0
        try:
            while submitted < len(chunks) or pending:
                while submitted < len(chunks) and len(pending) < ahead:
                    a, b = chunks[submitted]
                    args = (str(root), files[a:b], digests[a:b], settings)
                    pending.append(pool.submit(_decode_chunk, *args))
                    submitted += 1
                yield pending.pop(0).result()
        finally:
            for future in pending:
                future.cancel()
