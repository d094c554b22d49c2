"""Hostile image metadata and shapes (issue 26, item 5): the 15 inputs that answered 500, now each a 200 (read
safely: bad metadata counts as none) or a 422 naming the field. Generated variants: tests/test_api_fuzz.py."""
from __future__ import annotations

import base64
import io
import struct

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from backend.core.image_input import ImageInputError, clean_png, open_image
from backend.core.image_metadata import read_infotext
from backend.http.routes import build_api_router

TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 7: 1, 9: 4, 10: 8, 11: 4, 12: 8}
NUMBERS = {"SHORT": (3, struct.pack("<H", 7)), "LONG": (4, struct.pack("<I", 70000)),
           "RATIONAL": (5, struct.pack("<II", 1, 3)), "DOUBLE": (12, struct.pack("<d", 2.5))}


def exif_tiff(entries: list[tuple[int, int, bytes]], ifd0: list[tuple[int, int, bytes]] = ()) -> bytes:
    """Little-endian TIFF (what an EXIF block holds): IFD0 with `ifd0` and a pointer to an Exif IFD holding
    `entries`, each (tag, TIFF type, value bytes)."""
    def ifd(items, offset, next_offset=0):
        data_start = offset + 2 + 12 * len(items) + 4
        table, data = b"", b""
        for tag, kind, value in items:
            count = max(1, len(value) // TYPE_SIZES.get(kind, 1))
            if len(value) <= 4:
                table += struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\0")
            else:
                table += struct.pack("<HHII", tag, kind, count, data_start + len(data))
                data += value
        return struct.pack("<H", len(items)) + table + struct.pack("<I", next_offset) + data
    first = [*ifd0, (0x8769, 4, b"\0\0\0\0")]
    size_of_first = len(ifd(first, 8))
    first[-1] = (0x8769, 4, struct.pack("<I", 8 + size_of_first))
    return b"II*\x00" + struct.pack("<I", 8) + ifd(first, 8) + ifd(entries, 8 + size_of_first)


def encoded(fmt: str, exif: bytes | None = None, size=(64, 64), mode="RGB", **options) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 90).save(buffer, format=fmt, **({"exif": exif} if exif is not None else {}), **options)
    return buffer.getvalue()


def numeric_comment(kind: str, fmt: str = "JPEG") -> bytes:
    return encoded(fmt, b"Exif\x00\x00" + exif_tiff([(0x9286, *NUMBERS[kind])]))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def api(services):
    app = FastAPI()
    app.include_router(build_api_router(services, None))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


CHEAP_IMG2IMG = {"steps": 2, "denoising_strength": 0.5, "width": 64, "height": 64}
EXTRAS = {"upscaling_resize": 1, "upscaler_1": "Nearest"}
NOT_TIFF = b"this is not a TIFF block at all"

CASES = [  # (what, path, body): the fifteen former 500s
    *[(f"UserComment {kind} on png-info", "png-info", lambda kind=kind: {"image": b64(numeric_comment(kind))})
      for kind in NUMBERS],
    *[(f"UserComment {kind} on extras", "extra-single-image",
       lambda kind=kind: {"image": b64(numeric_comment(kind)), **EXTRAS}) for kind in NUMBERS],
    *[(f"{fmt} eXIf not TIFF on {path}", path, lambda fmt=fmt, path=path: {
        **({"init_images": [b64(encoded(fmt, NOT_TIFF))], **CHEAP_IMG2IMG} if path == "img2img" else
           {"image": b64(encoded(fmt, NOT_TIFF)), **(EXTRAS if path == "extra-single-image" else {})})})
      for fmt in ("PNG", "WEBP") for path in ("img2img", "extra-single-image", "png-info")],
]


@pytest.mark.parametrize("what, path, body", CASES, ids=[case[0] for case in CASES])
def test_former_server_errors_on_metadata_are_read_safely(api, what, path, body):
    answer = api.post(f"/sdapi/v1/{path}", json=body())
    assert answer.status_code == 200, (what, answer.text)
    if path == "png-info":
        assert answer.json()["info"] == ""  # a number is no infotext; broken EXIF is none


def test_a_strip_image_is_refused_naming_the_field(api):
    """A 67,108,864x1 PNG is within the pixel limit; resizing it needed gigabytes (MemoryError, a 500)."""
    strip = encoded("PNG", size=(8192 * 8192, 1), mode="L")
    answer = api.post("/sdapi/v1/img2img", json={"init_images": [b64(strip)], **CHEAP_IMG2IMG})
    assert answer.status_code == 422 and answer.json()["detail"].startswith("init_images[0]: image too wide")
    extras = api.post("/sdapi/v1/extra-single-image", json={"image": b64(strip), **EXTRAS})
    assert extras.status_code == 422 and "image" in extras.json()["detail"] and "16,384" in extras.json()["detail"]
    with pytest.raises(ImageInputError, match="too wide or tall"):
        open_image(encoded("PNG", size=(16385, 2), mode="L"))
    assert open_image(encoded("PNG", size=(16384, 2), mode="L")).size == (16384, 2)


def test_read_infotext_gives_text_or_none():
    assert read_infotext(Image.open(io.BytesIO(numeric_comment("DOUBLE")))) is None
    assert read_infotext(Image.open(io.BytesIO(encoded("PNG", NOT_TIFF)))) is None
    unicode_comment = b"Exif\x00\x00" + exif_tiff([(0x9286, 7, b"UNICODE\x00" + "a cat".encode("utf-16-be"))])
    assert read_infotext(Image.open(io.BytesIO(encoded("JPEG", unicode_comment)))) == "a cat"


def test_bad_orientation_data_leaves_the_image_unrotated():
    for exif in (NOT_TIFF, b"Exif\x00\x00" + exif_tiff([], ifd0=[(0x0112, 3, struct.pack("<H", 99))]),
                 b"Exif\x00\x00" + exif_tiff([], ifd0=[(0x0112, 4, struct.pack("<I", 2**31))])):
        cleaned = Image.open(io.BytesIO(clean_png(encoded("PNG", exif, size=(40, 20)))))
        assert cleaned.size == (40, 20)
    rotated = b"Exif\x00\x00" + exif_tiff([], ifd0=[(0x0112, 3, struct.pack("<H", 6))])  # a real rotation still works
    assert Image.open(io.BytesIO(clean_png(encoded("JPEG", rotated, size=(40, 20))))).size == (20, 40)
