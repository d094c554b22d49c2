"""A1111's "Outpainting mk2" (img2img): the image grows by `Pixels to expand` on each chosen side in turn (left,
right, up, down; the canvas a multiple of 64). For each side the new strip is first filled with noise matched to
the image (matched_noise.py), then the part of the canvas at that side, at most the request's width x height, is
inpainted (masked content "original", mask blur x 4) and pasted back. The finished images are saved with the first
pass's infotext; with more than one, their grid too (grid_save / return_grid), as A1111."""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw

from backend.core.requests import IMG2IMG_RANGES, SIZE_RANGE, ImageResult, RequestError
from backend.core.scripts import Script, ScriptArg
from backend.generation.scripts.grid_image import grid_rows, image_grid
from backend.generation.scripts.job import ScriptJob
from backend.generation.scripts.matched_noise import matched_noise
from backend.generation.scripts.poor_mans_outpainting import SIDES, expansion

ARGS = (
    ScriptArg("Info", "", "text", hidden=True),  # A1111's recommended-settings HTML: a placeholder in script_args
    ScriptArg("Pixels to expand", 128, "slider", minimum=8, maximum=256, step=8),
    ScriptArg("Mask blur", 8, "slider", minimum=0, maximum=64, step=1),
    ScriptArg("Outpainting direction", list(SIDES), "checkboxgroup", choices=SIDES),
    ScriptArg("Fall-off exponent (lower=higher detail)", 1.0, "slider", minimum=0, maximum=4, step=0.01),
    ScriptArg("Color variation", 0.05, "slider", minimum=0, maximum=1, step=0.01),
)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _multiple_of_8(value: int) -> int:
    return max(64, value // 8 * 8)


def prepared_canvas(image: Image.Image, side: str, amount: int, mask_blur: int, noise_q: float,
                    color_variation: float) -> tuple[Image.Image, Image.Image, tuple[int, int]]:
    """(canvas with the new strip filled with matched noise, mask (white: repaint), the grown size)."""
    horizontal = side in ("left", "right")
    grown = (image.width + amount, image.height) if horizontal else (image.width, image.height + amount)
    size = (math.ceil(grown[0] / 64) * 64, math.ceil(grown[1] / 64) * 64)
    canvas = Image.new("RGB", size)
    canvas.paste(image, (amount if side == "left" else 0, amount if side == "up" else 0))
    mask = Image.new("L", size, 255)
    ImageDraw.Draw(mask).rectangle((
        amount + mask_blur if side == "left" else 0, amount + mask_blur if side == "up" else 0,
        size[0] - amount - mask_blur if side == "right" else grown[0],
        size[1] - amount - mask_blur if side == "down" else grown[1]), fill=0)
    noised = matched_noise(np.asarray(canvas, dtype=np.float64) / 255, np.asarray(mask, dtype=np.float64) / 255,
                           noise_q, color_variation)
    return Image.fromarray(np.clip(noised * 255, 0, 255).astype(np.uint8)), mask, grown


def _expand(job: ScriptJob, images: list[Image.Image], side: str, amount: int, seed: int):
    """The images grown on one side; (images, result of the pass), or (None, result) when interrupted."""
    request = job.request
    _, _, mask_blur, _, noise_q, color_variation = job.args
    prepared = [prepared_canvas(image, side, amount, mask_blur, noise_q, color_variation) for image in images]
    canvas, mask, _ = prepared[0]
    horizontal = side in ("left", "right")
    width = _multiple_of_8(min(request.width, images[0].width + amount)) if horizontal else canvas.width
    height = canvas.height if horizontal else _multiple_of_8(min(request.height, images[0].height + amount))
    left = 0 if side == "left" else canvas.width - width
    top = 0 if side == "up" else canvas.height - height
    region = (left, top, left + width, top + height)
    tiles = [_png(filled.crop(region)) for filled, _, _ in prepared]
    result = job.generate(job.build(request, {
        "init_image": tiles[0], "extra_init_images": tiles[1:], "mask": _png(mask.crop(region)),
        "width": width, "height": height, "seed": seed, "batch_size": len(tiles), "n_iter": 1, "save_images": False,
        "mask_blur": min(mask_blur * 4, IMG2IMG_RANGES["mask_blur"][1]), "mask_blur_y": None, "inpainting_fill": 1,
        "inpaint_full_res": False, "inpainting_mask_invert": 0, "resize_mode": 0}))
    if result.interrupted or len(result.images) < len(tiles):
        return None, result
    grown_images = []
    for (filled, _, grown), made in zip(prepared, result.images):
        filled.paste(Image.open(io.BytesIO(made.png)).convert("RGB"), (left, top))
        grown_images.append(filled.crop((0, 0, *grown)))
    return grown_images, result


def run_outpainting_mk2(job: ScriptJob):
    _, pixels, _, direction, _, _ = job.args
    request = job.request
    if not direction:
        raise RequestError("script_args[3]", "Outpainting direction: choose at least one of left, right, up, down")
    source = Image.open(io.BytesIO(request.init_image)).convert("RGB")
    left, right, up, down, width, height = expansion(source.size, pixels, direction)
    if max(width, height) > SIZE_RANGE[1]:
        raise RequestError("script_args[1]", f"the expanded image {width}x{height} exceeds {SIZE_RANGE[1]} pixels")
    seed = request.seed if request.seed != -1 else job.fixed_seed()
    finished: list[Image.Image] = []
    first: ImageResult | None = None
    warnings: list[str] = []
    result = None
    for batch in range(request.n_iter):
        images = [source] * request.batch_size
        for side, amount in zip(SIDES, (left, right, up, down)):
            if not amount:
                continue
            images, result = _expand(job, images, side, amount, seed + batch * request.batch_size)
            warnings += result.warnings
            if images is None:
                return result.model_copy(update={"images": [], "interrupted": True})
            first = first or result.images[0]
        finished += images
    saved = [job.image_result(image, first.model_copy(update={"seed": seed + index}))
             for index, image in enumerate(finished)]
    shown = list(saved)
    options = job.options
    if len(finished) > 1 and (options.return_grid or options.grid_save):
        grid = job.grid_result(image_grid(finished, grid_rows(len(finished), 1, options.n_rows)), saved[0], "grid")
        if options.return_grid:
            shown.insert(0, grid)
    return result.model_copy(update={"images": shown, "warnings": list(dict.fromkeys(warnings))})


OUTPAINTING_MK2 = Script("Outpainting mk2", ARGS, run_outpainting_mk2, tabs=("img2img",))
