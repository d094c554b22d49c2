"""Reading A1111's infotext back out of an image file: the PNG `parameters` chunk, or the EXIF UserComment of a
JPEG/WEBP (PIL only; no torch)."""
from __future__ import annotations

import struct

from PIL import Image

from backend.core.infotext import MAX_INFOTEXT_CHARACTERS

# What Pillow's EXIF reader raises on damaged or hostile EXIF data (a chunk that is not TIFF, bad offsets ...)
EXIF_ERRORS = (SyntaxError, ValueError, TypeError, KeyError, IndexError, OSError, EOFError, struct.error)


def read_infotext(path_or_image) -> str | None:
    """The A1111 parameters of a PNG (text chunk) or JPEG/WEBP (EXIF UserComment), if any: always a str or None
    (a UserComment that is a number, or EXIF that does not parse, counts as none), and at most
    MAX_INFOTEXT_CHARACTERS long (the rest of a longer text is cut off)."""
    image = path_or_image if isinstance(path_or_image, Image.Image) else Image.open(path_or_image)
    text = image.info.get("parameters")
    if not isinstance(text, str):
        text = _exif_user_comment(image)
    return None if text is None else text[:MAX_INFOTEXT_CHARACTERS]


def _exif_user_comment(image: Image.Image) -> str | None:
    try:
        comment = image.getexif().get_ifd(0x8769).get(0x9286)  # Exif IFD -> UserComment
    except EXIF_ERRORS:
        return None
    if isinstance(comment, bytes):
        header, body = comment[:8], comment[8:]
        return body.decode("utf-16-be" if header.startswith(b"UNICODE") else "utf-8", errors="replace")
    return comment if isinstance(comment, str) else None  # LONG, SHORT, RATIONAL, DOUBLE ... are not infotext
