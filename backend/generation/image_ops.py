"""Pixel-space steps of img2img and inpainting, with A1111's meaning: resize modes, mask blur,
masked-content fill, the "only masked" crop region, outpaint canvases and the final composite."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from backend.core.requests import RequestError

JUST_RESIZE, CROP_AND_RESIZE, RESIZE_AND_FILL = 0, 1, 2
RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill")
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
MASK_MODES = ("Inpaint masked", "Inpaint not masked")


def resize_image(image: Image.Image, width: int, height: int, mode: int) -> Image.Image:
    if mode == JUST_RESIZE:
        return image.resize((width, height), Image.LANCZOS)
    ratio, source_ratio = width / height, image.width / image.height
    if mode == CROP_AND_RESIZE:
        # scale to cover the target, then cut the overflow equally from both sides
        scale = width / image.width if ratio > source_ratio else height / image.height
        resized = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))),
                               Image.LANCZOS)
        left, top = (resized.width - width) // 2, (resized.height - height) // 2
        return resized.crop((left, top, left + width, top + height))
    if mode == RESIZE_AND_FILL:
        # scale to fit inside, then stretch the edge rows/columns over the empty bands
        scale = width / image.width if ratio < source_ratio else height / image.height
        fitted = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                              Image.LANCZOS)
        canvas = Image.new(image.mode, (width, height))
        left, top = (width - fitted.width) // 2, (height - fitted.height) // 2
        canvas.paste(fitted, (left, top))
        if left > 0:
            canvas.paste(fitted.crop((0, 0, 1, fitted.height)).resize((left, fitted.height)), (0, top))
            right = width - left - fitted.width
            canvas.paste(fitted.crop((fitted.width - 1, 0, fitted.width, fitted.height)).resize(
                (right, fitted.height)), (left + fitted.width, top))
        if top > 0:
            canvas.paste(fitted.crop((0, 0, fitted.width, 1)).resize((fitted.width, top)), (left, 0))
            bottom = height - top - fitted.height
            canvas.paste(fitted.crop((0, fitted.height - 1, fitted.width, fitted.height)).resize(
                (fitted.width, bottom)), (left, top + fitted.height))
        return canvas
    raise RequestError("resize_mode", f"must be 0 ({RESIZE_MODES[0]}), 1 ({RESIZE_MODES[1]}) or 2 ({RESIZE_MODES[2]})")


def binary_mask(mask: Image.Image, invert: bool) -> Image.Image:
    """White = repaint. A mask with transparency counts its opaque (drawn) pixels."""
    if mask.mode in ("RGBA", "LA") or (mask.mode == "P" and "transparency" in mask.info):
        values = np.asarray(mask.convert("RGBA"))[..., 3]
    else:
        values = np.asarray(mask.convert("L"))
    result = values >= 128
    if invert:
        result = ~result
    return Image.fromarray((result * 255).astype(np.uint8), "L")


def blur_mask(mask: Image.Image, radius: int, radius_y: int | None = None) -> Image.Image:
    """Gaussian blur of the mask; `radius_y`: a different vertical radius (A1111's mask_blur_x / mask_blur_y)."""
    radius_y = radius if radius_y is None else radius_y
    if radius <= 0 and radius_y <= 0:
        return mask
    return mask.filter(ImageFilter.GaussianBlur(radius if radius == radius_y else (radius, radius_y)))


FILL_PASSES = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1))  # (blur radius, times composited), as A1111


def fill_masked_area(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "fill": the masked area becomes ever less blurry copies of the surroundings laid over each other,
    so the sampler starts from the local colours instead of the old content. Each copy is the known pixels
    blurred with their coverage (premultiplied) and composited over the previous ones by that coverage, so where
    few known pixels reach, a copy adds little."""
    image = image.convert("RGB")
    keep = np.asarray(mask.convert("L")) < 128
    pixels = np.asarray(image, dtype=np.float64)
    if not keep.any():
        return image
    coverage = Image.fromarray((keep * 255).astype(np.uint8))
    premultiplied = Image.fromarray((pixels * keep[..., None]).round().astype(np.uint8))
    result = np.broadcast_to(pixels[keep].mean(axis=0), pixels.shape).copy()  # where no copy reaches
    for radius, repeats in FILL_PASSES:
        blur = ImageFilter.GaussianBlur(radius) if radius else None
        colour = np.asarray(premultiplied.filter(blur) if blur else premultiplied, dtype=np.float64)
        alpha = np.asarray(coverage.filter(blur) if blur else coverage, dtype=np.float64)[..., None] / 255
        for _ in range(repeats):
            result = colour + result * (1 - alpha)
    result[keep] = pixels[keep]
    return Image.fromarray(np.clip(result, 0, 255).round().astype(np.uint8))


def mask_crop_region(mask: Image.Image, padding: int, width: int, height: int) -> tuple[int, int, int, int]:
    """"Only masked": the mask's bounding box plus padding, grown to the target aspect ratio and kept
    inside the image. Returns (left, top, right, bottom)."""
    box = mask.getbbox()
    if box is None:
        raise RequestError("mask", "the mask is empty")
    left, top, right, bottom = box
    left, top = max(0, left - padding), max(0, top - padding)
    right, bottom = min(mask.width, right + padding), min(mask.height, bottom + padding)
    target_ratio = width / height
    box_width, box_height = right - left, bottom - top
    if box_width / box_height < target_ratio:
        grow = round(box_height * target_ratio) - box_width
        left, right = left - grow // 2, right + grow - grow // 2
    else:
        grow = round(box_width / target_ratio) - box_height
        top, bottom = top - grow // 2, bottom + grow - grow // 2
    # shift back inside the image, shrinking only when the image itself is too small
    if left < 0:
        right, left = min(mask.width, right - left), 0
    if right > mask.width:
        left, right = max(0, left - (right - mask.width)), mask.width
    if top < 0:
        bottom, top = min(mask.height, bottom - top), 0
    if bottom > mask.height:
        top, bottom = max(0, top - (bottom - mask.height)), mask.height
    return left, top, right, bottom


def outpaint_canvas(image: Image.Image, left: int, right: int, up: int, down: int,
                    mask_blur: int = 0) -> tuple[Image.Image, Image.Image]:
    """The image on a larger canvas and the mask to repaint (white), as A1111's outpainting makes them: the new area
    starts as the image's edge colours extended outwards and blurred ("fill"), so the sampler continues what is at
    the border; the mask reaches 2 x `mask_blur` pixels into the image on each extended side, so that the blurred
    mask blends across the seam instead of stopping at a hard edge."""
    width, height = image.width + left + right, image.height + up + down
    grown = Image.new("RGB", (width, height))
    grown.paste(image.convert("RGB"), (left, up))
    new_area = Image.new("L", (width, height), 255)
    new_area.paste(0, (left, up, left + image.width, up + image.height))
    grown = fill_masked_area(grown, new_area)
    band = 2 * mask_blur
    mask = Image.new("L", (width, height), 255)
    kept = (left + (band if left else 0), up + (band if up else 0),
            left + image.width - (band if right else 0), up + image.height - (band if down else 0))
    if kept[0] < kept[2] and kept[1] < kept[3]:
        mask.paste(0, kept)
    return grown, mask


def composite(original: Image.Image, generated: Image.Image, alpha: Image.Image) -> Image.Image:
    """Where alpha is 0 the original's pixels come back exactly."""
    return Image.composite(generated.convert("RGB"), original.convert("RGB"), alpha.convert("L"))
