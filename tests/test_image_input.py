"""Input images are checked from their header, decoded only when acceptable, and re-encoded as plain PNG."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile
from PIL.PngImagePlugin import PngInfo

from backend.core.image_input import ImageInputError, clean_png, open_image
from backend.core.image_metadata import read_infotext


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG signature and header that claims the given size, with almost no pixel data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def test_oversized_image_is_refused_before_any_pixel_is_decoded(monkeypatch):
    def no_decoding(self):
        raise AssertionError("pixels were decoded")
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    for width, height in ((9000, 9000), (100_000, 100_000)):  # over our limit; over Pillow's own bomb limit
        with pytest.raises(ImageInputError, match="too large"):
            open_image(png_claiming(width, height))


@pytest.mark.parametrize("data, words", [
    (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "SVG"),
    (b"<html><body>hi</body></html>", "PNG, JPEG"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "PNG, JPEG"),  # EPS would run Ghostscript
    (encoded(Image.new("RGB", (8, 8)), "TIFF"), "PNG, JPEG"),
    (encoded(Image.new("RGB", (64, 64), (9, 9, 9)), "PNG")[:120], "damaged or truncated"),
    (b"", "PNG, JPEG"),
])
def test_non_raster_and_damaged_files_are_refused(data, words):
    with pytest.raises(ImageInputError, match=words):
        clean_png(data)


def test_reencoded_png_keeps_pixels_and_drops_everything_else():
    pixels = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    chunks = PngInfo()
    chunks.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler, Seed: 1")
    chunks.add_text("Comment", "<script>alert(1)</script>")
    original = encoded(Image.fromarray(pixels), "PNG", pnginfo=chunks) + b"trailing bytes after IEND"
    cleaned = Image.open(io.BytesIO(clean_png(original)))
    assert np.array_equal(np.asarray(cleaned), pixels)
    assert "Comment" not in cleaned.info and read_infotext(cleaned) is None
    kept = Image.open(io.BytesIO(clean_png(original, keep_infotext=True)))
    assert read_infotext(kept) == "a cat\nSteps: 20, Sampler: Euler, Seed: 1" and "Comment" not in kept.info


def test_camera_rotation_is_applied_and_odd_modes_normalised():
    tall = Image.new("RGB", (20, 40), (200, 10, 10))
    exif = tall.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    rotated = Image.open(io.BytesIO(clean_png(encoded(tall, "JPEG", exif=exif.tobytes()))))
    assert rotated.size == (40, 20)
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    transparent = Image.open(io.BytesIO(clean_png(encoded(palette, "PNG", transparency=0))))
    assert transparent.mode == "RGBA" and transparent.getpixel((0, 0)) == (255, 0, 0, 255)
    cmyk = Image.open(io.BytesIO(clean_png(encoded(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"))))
    assert cmyk.mode == "RGB" and cmyk.getpixel((0, 0))[0] > 200
    for fmt in ("WEBP", "BMP", "GIF"):
        assert Image.open(io.BytesIO(clean_png(encoded(Image.new("RGB", (8, 8), (0, 0, 250)), fmt)))).size == (8, 8)
