"""Turn any picture of one digit into an MNIST-style 28x28 input. No TensorFlow here.

MNIST digits are white on black, fitted into a 20x20 box (aspect kept, anti-aliased) and placed
in 28x28 so that their centre of mass is at the centre. A photo, scan or drawing must be
normalised the same way or the model misreads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.core.errors import DataError

BOX = 20  # MNIST fits each digit into 20x20 ...
MNIST_SHAPE = (28, 28)  # ... centred by mass in 28x28
SIZE = MNIST_SHAPE[0]
MIN_CONTRAST = 32  # grey levels between background and ink below which an image is blank
# Formats opened: none whose reader calls other programs (Pillow's EPS runs Ghostscript).
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
PNG_OR_JPEG = ("PNG", "JPEG")  # what the web app and a folder dataset take
MAX_PIXELS = 16_000_000  # an uploaded or folder picture with more is refused before decoding
# A large picture is shrunk by a whole factor (JPEGs while they are decoded) keeping both sides
# at least this long: the digit ends up 20 pixels tall, and a photo costs a fraction of its size.
DRAFT = 512


def load_image(
    source: Path | BinaryIO,
    name: str | None = None,
    max_pixels: int | None = None,
    formats: tuple[str, ...] = FORMATS,
) -> np.ndarray:
    """Read a PNG, JPEG or another of `formats`, from a path or an open binary file, as
    grayscale 0-255. `name` is what errors call it (the path by default); an image of more
    than `max_pixels` pixels is refused before it is decoded.

    Transparent parts are paper. Drawing apps export strokes of any colour on a transparent
    background, so the paper is put under the strokes in the opposite shade: black under light
    strokes, white under dark ones; the alpha channel then draws the digit either way.
    """
    path = name or str(source)
    try:
        with Image.open(source, formats=formats) as img:
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise ImageTooLarge(
                    f"{path}: {img.width} x {img.height} pixels, more than the "
                    f"{max_pixels / 1e6:g} megapixels allowed; scale it down first."
                )
            if img.format == "JPEG":
                img.draft("L", (DRAFT, DRAFT))
            img.load()
            if (factor := min(img.size) // DRAFT) > 1:
                if img.mode in ("1", "P", "I;16"):  # modes Pillow cannot reduce
                    img = img.convert("RGBA" if img.mode == "P" else "L")
                img = img.reduce(factor)
            if img.mode in ("RGBA", "LA", "P", "PA"):
                rgba = img.convert("RGBA")
                img = Image.alpha_composite(Image.new("RGBA", rgba.size, _paper(rgba)), rgba)
            return np.asarray(img.convert("L"), dtype=np.float32)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file.") from exc
    except UnidentifiedImageError as exc:
        raise DataError(
            f"{path}: not an image in a format read here ({', '.join(formats)})."
        ) from exc
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{path}: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: unreadable image ({exc}).") from exc


class ImageTooLarge(DataError):
    """An image with more pixels than allowed."""


def _paper(rgba: Image.Image) -> str:
    """White, or black where the visible strokes are light (mean grey of opaque pixels > 127)."""
    alpha = np.asarray(rgba.getchannel("A"))
    opaque = alpha > 127
    if not opaque.any() or opaque.all():
        return "white"
    grey = np.asarray(rgba.convert("L"))[opaque]
    return "black" if grey.mean() > 127 else "white"


def normalize(
    gray: np.ndarray, name: str = "image", shape: tuple[int, int] = MNIST_SHAPE
) -> np.ndarray:
    """A grayscale digit of any size and polarity -> float32 28x28 in 0-1, white on black
    (then resized to `shape` for a model of another input size)."""
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = float(np.median(border))
    ink = background - gray if background > 127 else gray - background  # digit bright
    ink = np.clip(ink, 0, None)
    if ink.max() < MIN_CONTRAST:
        raise DataError(
            f"{name}: blank, no digit found (contrast {ink.max():.0f} of 255 grey levels, "
            f"at least {MIN_CONTRAST} needed)."
        )
    rows, cols = np.nonzero(ink > 0.1 * ink.max())
    digit = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    height, width = digit.shape
    scale = BOX / max(height, width)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    boxed = np.asarray(
        Image.fromarray(digit).resize(new_size, Image.Resampling.LANCZOS), dtype=np.float32
    )
    boxed = np.clip(boxed, 0, None)
    canvas = np.zeros(MNIST_SHAPE, dtype=np.float32)
    top, left = (SIZE - boxed.shape[0]) // 2, (SIZE - boxed.shape[1]) // 2
    canvas[top : top + boxed.shape[0], left : left + boxed.shape[1]] = boxed
    canvas = _centre_by_mass(canvas)
    canvas = canvas / canvas.max()
    if tuple(shape) != MNIST_SHAPE:
        canvas = resize(canvas * 255, shape) / np.float32(255)
    return canvas


def fit(gray: np.ndarray, name: str = "image", shape: tuple[int, int] = MNIST_SHAPE) -> np.ndarray:
    """A grayscale picture of one object (not handwriting) -> float32 28x28 (or `shape`) in 0-1
    on a dark background, as Fashion-MNIST's: inverted when its border is light, padded to a
    square with its background and scaled down whole; no cropping or centring."""
    if float(np.median(_border(gray))) > 127:
        gray = 255 - gray
    if gray.max() - gray.min() < MIN_CONTRAST:
        raise DataError(
            f"{name}: blank, nothing to classify (contrast {gray.max() - gray.min():.0f} of 255 "
            f"grey levels, at least {MIN_CONTRAST} needed)."
        )
    height, width = gray.shape
    side = max(height, width)
    square = np.full((side, side), float(np.median(_border(gray))), dtype=np.float32)
    top, left = (side - height) // 2, (side - width) // 2
    square[top : top + height, left : left + width] = gray
    small = Image.fromarray(square).resize(tuple(shape)[::-1], Image.Resampling.LANCZOS)
    return np.clip(np.asarray(small, dtype=np.float32) / 255.0, 0.0, 1.0)


def resize(gray: np.ndarray, shape: tuple[int, int] = MNIST_SHAPE) -> np.ndarray:
    """A grayscale picture (0-255) -> uint8 of `shape` (height, width), bilinear, aspect not
    kept, as Keras resizes: how a folder dataset's pictures become its images, and how predict
    and the web app read a picture for a model trained on one."""
    img = Image.fromarray(np.clip(np.round(gray), 0, 255).astype(np.uint8), mode="L")
    if img.size != tuple(shape)[::-1]:
        img = img.resize(tuple(shape)[::-1], Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def _border(gray: np.ndarray) -> np.ndarray:
    return np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])


def _centre_by_mass(image: np.ndarray) -> np.ndarray:
    """Shift `image` by whole pixels so that its centre of mass is at the centre."""
    total = image.sum()
    ys, xs = np.indices(image.shape)
    dy = round((SIZE - 1) / 2 - (ys * image).sum() / total)
    dx = round((SIZE - 1) / 2 - (xs * image).sum() / total)
    rows, cols = np.nonzero(image)
    dy = int(np.clip(dy, -rows.min(), SIZE - 1 - rows.max()))  # never push ink off the canvas
    dx = int(np.clip(dx, -cols.min(), SIZE - 1 - cols.max()))
    return np.roll(image, (dy, dx), axis=(0, 1))


def save_png(image: np.ndarray, path: Path) -> None:
    """Write a 0-1 image as an 8-bit grayscale PNG (what the model saw)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(image * 255).astype(np.uint8), mode="L").save(path)
