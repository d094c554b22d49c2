"""Images from users (uploads, base64 in API bodies, files in a server folder), read defensively.

Only raster formats whose decoders are small and well fuzzed are accepted; the size is read from the
header and checked before any pixel is decoded (a small PNG can claim billions of pixels); what is used
afterwards is a fresh PNG made from the decoded pixels, so nothing of the original file (metadata, trailing
bytes, odd modes) travels further.
"""
from __future__ import annotations

import contextlib
import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from backend.core.errors import UserError
from backend.core.image_metadata import EXIF_ERRORS, read_infotext

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
ACCEPTED_TEXT = "a PNG, JPEG, WEBP, BMP or GIF image"
MAX_INPUT_PIXELS = 8192 * 8192  # the largest image any job may produce (max upscale size) also bounds inputs
# A side past this is a strip, not a picture: resizing a 67,108,864x1 image (within the pixel limit) needs
# gigabytes of Lanczos coefficients.
MAX_INPUT_SIDE = 16384
KEPT_MODES = ("RGB", "RGBA", "L", "LA")  # masks may carry their drawing in the alpha channel


class ImageInputError(UserError):
    """An input image that is refused; the message says why, for the user."""

    def __init__(self, message: str):
        super().__init__(None, message)


class NotAnImageError(ImageInputError):
    """The file is not an image in an accepted format at all (a text file, SVG, HTML...)."""


NOT_AN_IMAGE = "this file is not an image (PNG, JPEG, WEBP, BMP or GIF)"


def open_image(data: bytes, max_pixels: int = MAX_INPUT_PIXELS) -> Image.Image:
    """Decode `data` after checking its format and its declared size; the image keeps its metadata
    (PNG Info reads it). Raises ImageInputError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides, below
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError:
        raise ImageInputError(f"image too large: more than {max_pixels:,} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise NotAnImageError(f"must be {ACCEPTED_TEXT} (SVG, HTML and other files are refused)") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageInputError(f"image too large: {width}x{height} is more than {max_pixels:,} pixels")
    if max(width, height) > MAX_INPUT_SIDE:
        raise ImageInputError(f"image too wide or tall: {width}x{height}; each side may be at most "
                              f"{MAX_INPUT_SIDE:,} pixels")
    try:
        image.load()
    except (OSError, ValueError, SyntaxError):  # truncated or corrupt pixel data
        raise ImageInputError(f"not a readable image: the {image.format} data is damaged or truncated") from None
    return image


def clean_image(image: Image.Image) -> Image.Image:
    """The decoded pixels only: camera rotation applied, mode made one of RGB/RGBA/L/LA, no metadata. EXIF that
    does not parse counts as absent (no rotation)."""
    with contextlib.suppress(*EXIF_ERRORS):
        image = ImageOps.exif_transpose(image)
    if image.mode not in KEPT_MODES:
        keeps_alpha = "A" in image.getbands() or "transparency" in image.info
        image = image.convert("RGBA" if keeps_alpha else "RGB")
    return Image.frombytes(image.mode, image.size, image.tobytes())  # drops info, palette and EXIF


def clean_png(data: bytes, max_pixels: int = MAX_INPUT_PIXELS, keep_infotext: bool = False) -> bytes:
    """`data` re-encoded as a plain PNG of its pixels (what requests keep and jobs read). `keep_infotext` carries
    the generation parameters over (Extras copies them to its output, as A1111 does) as a plain text chunk."""
    original = open_image(data, max_pixels)
    text_chunks = PngInfo()
    infotext = read_infotext(original) if keep_infotext else None
    if infotext:
        text_chunks.add_text("parameters", infotext)
    buffer = io.BytesIO()
    # speed over size: these files live only as long as the job
    clean_image(original).save(buffer, format="PNG", compress_level=1, pnginfo=text_chunks)
    return buffer.getvalue()


def upload_problem(data: bytes) -> str | None:
    """Why an uploaded file cannot be an input image, in words for the person who chose it (None: it can be)."""
    try:
        open_image(data)
    except NotAnImageError:
        return NOT_AN_IMAGE
    except ImageInputError as error:
        return f"this image cannot be used: {error}"
    return None
