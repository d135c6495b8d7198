"""A folder of labelled pictures as a dataset: one subfolder per class, PNG or JPEG files of any
size, read into grayscale arrays of `data.image_size` (28x28 by default). No TensorFlow here.

The layout is the one Keras's `image_dataset_from_directory` and torchvision's `ImageFolder`
read: class names are the subfolders' names (sorted, unless `data.classes` orders them), a
class's pictures may sit in nested folders, hidden files and folders are left out. Pictures are
resized as Keras resizes them (bilinear, aspect not kept). Every picture's SHA-256 goes
into a manifest whose own digest stands for the folder in the run's provenance.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.config import DataConfig
from pipeline.core.errors import DataError
from pipeline.core.images import MAX_PIXELS, PNG_OR_JPEG, load_image, resize


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


def read_folder(data: DataConfig) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """All pictures of the folder dataset `data` as uint8 (N, height, width) images and labels, and
    its manifest (classes, per-picture SHA-256, the folder's digest). Raises `DataError` naming
    the path and what is wrong: a class without enough pictures, a file that is not a picture."""
    root = Path(str(data.path))
    classes, shape = data.class_names, tuple(data.image_size)
    need = min_per_class(float(data.test_fraction or 0))
    images, labels, digests = [], [], {}
    for label, name in enumerate(classes):
        files = pictures(root / name)
        if len(files) < need:
            raise DataError(
                f"data.path {root}: class {name!r} has {len(files)} picture(s); with "
                f"data.test_fraction {data.test_fraction} a class needs at least {need} (one "
                "for the test set, two for training and validation). Add pictures to "
                f"{root / name}/ or leave the class out."
            )
        for path in files:
            rel = path.relative_to(root).as_posix()
            raw = path.read_bytes()  # read once: digested and decoded
            try:
                gray = load_image(io.BytesIO(raw), str(path), MAX_PIXELS, PNG_OR_JPEG)
            except DataError as exc:
                raise DataError(
                    f"data.path {root}: {rel} is not a picture read here ({exc}); a class "
                    "folder holds only PNG or JPEG files. Move it out of the folder."
                ) from None
            images.append(resize(gray, shape))
            labels.append(label)
            digests[rel] = hashlib.sha256(raw).hexdigest()
    listing = "".join(f"{rel}\0{sha}\n" for rel, sha in sorted(digests.items()))
    manifest = {
        "path": str(root),
        "classes": classes,
        "pictures": len(digests),
        "sha256": hashlib.sha256(listing.encode()).hexdigest(),
        "files": digests,
    }
    return np.stack(images), np.asarray(labels, dtype=np.uint8), manifest
