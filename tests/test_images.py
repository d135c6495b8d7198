"""Pictures as a folder dataset reads them (core/images.py's `read_picture`): colour or grey,
transparency on the configured background, EXIF orientation, CMYK and 16-bit conversions against
a reference, the three ways to meet an aspect ratio, JPEG's reduced-scale decoding, and bad files
named. Every picture here is written by the test itself."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.core import images
from pipeline.core.errors import DataError
from pipeline.core.images import PictureSettings, read_picture


def saved(picture: Image.Image, fmt: str = "PNG", **options: object) -> io.BytesIO:
    buffer = io.BytesIO()
    picture.save(buffer, fmt, **options)
    buffer.seek(0)
    return buffer


def gradient(height: int = 40, width: int = 60) -> np.ndarray:
    """An RGB picture whose every pixel differs in each channel."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs * 4 % 256, ys * 6 % 256, (xs + ys) * 3 % 256], -1).astype(np.uint8)


def test_colour_and_grayscale_of_the_same_picture() -> None:
    rgb = gradient(28, 28)
    source = saved(Image.fromarray(rgb))
    colour = read_picture(source, PictureSettings((28, 28), "rgb"))
    assert colour.shape == (28, 28, 3) and colour.dtype == np.uint8
    np.testing.assert_array_equal(colour, rgb)  # the right size already: untouched
    source.seek(0)
    grey = read_picture(source, PictureSettings((28, 28), "grayscale"))
    want = np.asarray(Image.fromarray(rgb).convert("L"))  # ITU-R 601-2 luma, as Pillow's L
    assert grey.shape == (28, 28, 1)
    np.testing.assert_array_equal(grey[..., 0], want)


@pytest.mark.parametrize("background", ["white", "black", "#ff8000"])
def test_transparency_is_composited_on_the_background(background: str) -> None:
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[:, :5] = (0, 0, 255, 255)  # opaque blue on the left, fully transparent on the right
    rgba[:, 5:, :3] = 77  # whatever a transparent pixel holds is not seen
    got = read_picture(
        saved(Image.fromarray(rgba)), PictureSettings((10, 10), "rgb", "stretch", background)
    )
    from PIL import ImageColor

    assert (got[:, :5] == (0, 0, 255)).all()
    assert (got[:, 5:] == ImageColor.getrgb(background)[:3]).all()
    # A palette picture's transparent entry, and a half-transparent pixel, likewise.
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0])
    palette.putpixel((0, 0), 1)
    got = read_picture(
        saved(palette, transparency=0), PictureSettings((4, 4), "rgb", "stretch", background)
    )
    assert (
        tuple(got[0, 0]) == (0, 255, 0) and tuple(got[3, 3]) == ImageColor.getrgb(background)[:3]
    )
    half = np.zeros((2, 2, 4), np.uint8)
    half[...] = (200, 100, 0, 128)
    got = read_picture(
        saved(Image.fromarray(half)), PictureSettings((2, 2), "rgb", "stretch", background)
    )
    paper = np.array(ImageColor.getrgb(background)[:3])
    want = np.round((np.array([200, 100, 0]) * 128 + paper * 127) / 255)
    np.testing.assert_allclose(got[0, 0], want, atol=1)


def test_exif_orientation_turns_a_phone_photo_upright() -> None:
    upright = gradient(30, 20)  # tall
    stored = np.rot90(upright, k=1)  # as the sensor stored it: wide
    exif = Image.Exif()
    exif[images.ORIENTATION] = 6  # "rotate 90 degrees clockwise to view"
    source = saved(Image.fromarray(stored), "JPEG", quality=100, exif=exif)
    got = read_picture(source, PictureSettings((30, 20), "rgb"))
    assert got.shape == (30, 20, 3)
    assert np.abs(got.astype(int) - upright).mean() < 3  # JPEG's loss, not a turned picture
    source.seek(0)
    unturned = np.asarray(Image.open(source).resize((20, 30)))
    assert np.abs(unturned.astype(int) - upright).mean() > 20


def test_cmyk_is_converted_as_the_reference_formula_says() -> None:
    """R = 255 (1 - C/255)(1 - K/255) and so on: the conversion of a CMYK picture without a
    colour profile, which JPEGs from print workflows are."""
    rng = np.random.default_rng(0)
    cmyk = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    source = saved(Image.fromarray(cmyk, "CMYK"), "TIFF")
    got = read_picture(source, PictureSettings((16, 16)), formats=("TIFF",))
    c, m, y, k = (cmyk[..., i].astype(float) / 255 for i in range(4))
    reference = np.stack([(1 - c) * (1 - k), (1 - m) * (1 - k), (1 - y) * (1 - k)], -1) * 255
    assert np.abs(got - reference).max() <= 1
    # A CMYK JPEG (as Photoshop writes them) is read, in colour, near the same numbers.
    smooth = np.repeat(np.repeat(cmyk[:4, :4], 8, 0), 8, 1)
    jpeg = saved(Image.fromarray(smooth, "CMYK"), "JPEG", quality=100)
    got = read_picture(jpeg, PictureSettings((32, 32)))
    c, m, y, k = (smooth[..., i].astype(float) / 255 for i in range(4))
    reference = np.stack([(1 - c) * (1 - k), (1 - m) * (1 - k), (1 - y) * (1 - k)], -1) * 255
    assert np.abs(got - reference).mean() < 4


def png16(levels: np.ndarray) -> io.BytesIO:
    """A 16-bit PNG (grey: (h, w); colour: (h, w, 3)), written by hand: Pillow writes only the
    grey kind."""
    height, width = levels.shape[:2]
    colour = 2 if levels.ndim == 3 else 0
    rows = levels.astype(">u2").reshape(height, -1).tobytes()
    stride = len(rows) // height
    raw = b"".join(b"\0" + rows[i * stride : (i + 1) * stride] for i in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
    return io.BytesIO(png + chunk(b"IEND", b""))


def test_16_bit_levels_are_scaled_to_8_bits_not_clipped() -> None:
    levels = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    got = read_picture(png16(levels), PictureSettings((8, 8), "grayscale"))
    np.testing.assert_array_equal(got[..., 0], np.round(levels / 257).astype(np.uint8))
    assert got.max() == 255 and got.min() == 0 and len(np.unique(got)) == 64
    colour = np.stack([levels, levels[::-1], 65535 - levels], -1)
    got = read_picture(png16(colour), PictureSettings((8, 8), "rgb"))
    assert np.abs(got.astype(int) - np.round(colour / 257)).max() <= 1


def test_stretch_crop_and_pad_meet_the_aspect_ratio_three_ways() -> None:
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, 20:40] = 255  # a white square in the middle of a black band
    source = saved(Image.fromarray(wide))

    def read(how: str) -> np.ndarray:
        source.seek(0)
        return read_picture(source, PictureSettings((20, 20), "rgb", how, "#0000ff"))

    stretched, cropped, padded = read("stretch"), read("crop"), read("pad")
    assert (stretched[:, 0] == 0).all() and (stretched[:, 10] == 255).all()  # squeezed
    assert (cropped == 255).all()  # the centre square, whole
    assert (padded[:6] == (0, 0, 255)).all() and (padded[-6:] == (0, 0, 255)).all()  # bands
    assert (padded[10, 10] == 255).all() and (padded[10, 0] == 0).all()


def test_a_large_jpeg_is_decoded_at_a_reduced_scale() -> None:
    big = Image.fromarray(np.repeat(np.repeat(gradient(150, 200), 8, 0), 8, 1))  # 1600 x 1200
    source = saved(big, "JPEG", quality=90)
    with Image.open(source) as img:
        images._draft(img, PictureSettings((64, 64)))
        assert img.size == (200, 150)  # 1/8: still more than 64 on each side
    with Image.open(source) as img:
        images._draft(img, PictureSettings((300, 400)))  # height, width
        assert img.size == (400, 300)  # 1/4
    source.seek(0)
    fast = read_picture(source, PictureSettings((64, 64)))
    full = np.asarray(big.resize((64, 64), Image.Resampling.BILINEAR))
    assert np.abs(fast.astype(int) - full).mean() < 4


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"not a picture at all", "not a picture in a format read here (PNG, JPEG)"),
        ("cut", "unreadable picture"),
    ],
)
def test_a_bad_file_is_named_with_what_is_wrong(
    content: object, says: str, tmp_path: Path
) -> None:
    path = tmp_path / "bad.png"
    if content == "cut":
        noise = np.random.default_rng(0).integers(0, 256, (40, 60, 3), np.uint8)
        whole = saved(Image.fromarray(noise)).getvalue()
        content = whole[: len(whole) // 2]
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_picture(path, PictureSettings((28, 28)))
    assert str(err.value).startswith(f"{path}: {says}"), err.value
