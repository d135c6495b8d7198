"""Pictures into model inputs. No TensorFlow here.

`read_picture` reads any picture a camera or an editor writes (colour or grey, transparent,
palette, 16-bit, CMYK, rotated by its EXIF orientation) as a folder dataset's settings say
(`PictureSettings`: size, colour, how the aspect ratio is met, the background): how a folder's
pictures become its images, and how predict and the web app read a picture for its models.

For handwriting, `load_image` and `normalize` turn a picture of one digit into an MNIST-style
28x28 input: MNIST digits are white on black, fitted into a 20x20 box (aspect kept,
anti-aliased) and placed in 28x28 so that their centre of mass is at the centre. A photo, scan
or drawing must be normalised the same way or the model misreads it.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageCms, ImageColor, ImageOps, UnidentifiedImageError

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


@dataclass(frozen=True)
class PictureSettings:
    """How a dataset's pictures become its images: `size` (height, width), `color` ("rgb" or
    "grayscale"), `resize` ("stretch", "crop" or "pad") and the `background` colour that
    transparent parts and padding become."""

    size: tuple[int, int]
    color: str = "rgb"
    resize: str = "stretch"
    background: str = "white"

    @property
    def channels(self) -> int:
        return 3 if self.color == "rgb" else 1


ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def read_picture(
    source: Path | BinaryIO,
    settings: PictureSettings,
    name: str | None = None,
    max_pixels: int | None = MAX_PIXELS,
    formats: tuple[str, ...] = PNG_OR_JPEG,
) -> np.ndarray:
    """A picture file as uint8 (height, width, channels) of `settings`.

    EXIF orientation is applied (phone photos); transparency (alpha, a palette's or a grey
    picture's transparent entry) is composited on `settings.background`; CMYK and pictures
    with an ICC profile other than sRGB are converted to sRGB through the profile (CMYK without
    one as Pillow converts it: R = (255 - C)(255 - K)/255); 16-bit grey levels are scaled to
    8 bits (v / 257), not clipped. A JPEG larger than needed is decoded at 1/2, 1/4 or 1/8
    scale (Pillow's `draft`). Raises `DataError` naming the file and what is wrong: not a
    picture, cut short, too large.
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
                _draft(img, settings)
            img.load()
            img = ImageOps.exif_transpose(img)
            picture = _to_8bit(img, settings)
            return np.asarray(_resized(picture, settings), dtype=np.uint8).reshape(
                *settings.size, settings.channels
            )
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file.") from exc
    except UnidentifiedImageError as exc:
        raise DataError(
            f"{path}: not a picture in a format read here ({', '.join(formats)})."
        ) from exc
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{path}: {exc}") from exc
    except (OSError, SyntaxError, ValueError, ImageCms.PyCMSError) as exc:
        raise DataError(f"{path}: unreadable picture ({exc}).") from exc


def _draft(img: Image.Image, settings: PictureSettings) -> None:
    """Let a JPEG decode at the smallest of 1/8, 1/4, 1/2 and full scale that still covers
    what `settings` takes of it (its EXIF orientation may swap the sides)."""
    height, width = settings.size
    across, down = img.size  # as stored
    turned = img.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8)
    if turned:
        across, down = down, across  # as shown
    if settings.resize == "stretch":
        need = (width, height)
    else:  # crop keeps the part of the right aspect, pad the whole picture
        scale = (max if settings.resize == "crop" else min)(width / across, height / down)
        need = (math.ceil(across * scale), math.ceil(down * scale))
    if turned:
        need = need[::-1]
    mode = "L" if settings.color == "grayscale" and img.mode == "RGB" else None
    img.draft(mode, (max(1, need[0]), max(1, need[1])))


ORIENTATION = 0x0112  # the EXIF tag


def _to_8bit(img: Image.Image, settings: PictureSettings) -> Image.Image:
    """`img` as 8-bit RGB or L of `settings.color`, transparency on the background."""
    if img.mode in SIXTEEN_BIT:
        levels = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.round(levels / 257), 0, 255).astype(np.uint8), "L")
    elif img.mode == "1":
        img = img.convert("L")
    elif img.mode == "F":
        raise ValueError("floating-point pixels; save it as 8- or 16-bit PNG or as JPEG")
    profile = img.info.get("icc_profile")
    if profile and img.mode in ("RGB", "RGBA", "CMYK") and not _is_srgb(profile):
        img = _to_srgb(img, profile)
    if img.mode in ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (*ImageColor.getrgb(settings.background)[:3], 255))
        img = Image.alpha_composite(paper, rgba)
    return img.convert("RGB" if settings.color == "rgb" else "L")


def _is_srgb(profile: bytes) -> bool:
    try:
        described = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(profile)))
    except (ImageCms.PyCMSError, OSError, TypeError):
        return True  # a profile that cannot be read is left out, as most viewers do
    return "srgb" in described.lower()


def _to_srgb(img: Image.Image, profile: bytes) -> Image.Image:
    """`img` converted from its embedded ICC `profile` to sRGB (alpha kept)."""
    alpha = img.getchannel("A") if img.mode == "RGBA" else None
    source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    rgb = ImageCms.profileToProfile(
        img.convert("RGB") if alpha is not None else img,
        source,
        ImageCms.createProfile("sRGB"),
        outputMode="RGB",
    )
    if alpha is not None:
        rgb.putalpha(alpha)
    return rgb


def _resized(img: Image.Image, settings: PictureSettings) -> Image.Image:
    """`img` at `settings.size`, bilinear: stretched, centre-cropped to the aspect ratio, or
    padded to it with the background."""
    height, width = settings.size
    across, down = img.size
    if (across, down) == (width, height):
        return img
    bilinear = Image.Resampling.BILINEAR
    if settings.resize == "stretch":
        return img.resize((width, height), bilinear)
    if settings.resize == "crop":
        scale = max(width / across, height / down)
        box_w, box_h = width / scale, height / scale
        left, top = (across - box_w) / 2, (down - box_h) / 2
        return img.resize((width, height), bilinear, box=(left, top, left + box_w, top + box_h))
    scale = min(width / across, height / down)
    inner = (max(1, round(across * scale)), max(1, round(down * scale)))
    fill = ImageColor.getcolor(settings.background, img.mode)
    canvas = Image.new(img.mode, (width, height), fill)
    canvas.paste(img.resize(inner, bilinear), ((width - inner[0]) // 2, (height - inner[1]) // 2))
    return canvas


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
    """Write a 0-1 image, (height, width) or with 1 or 3 channels, as an 8-bit grayscale or
    colour PNG (what the model saw)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.round(np.asarray(image) * 255).astype(np.uint8)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    Image.fromarray(pixels, mode="RGB" if pixels.ndim == 3 else "L").save(path)
