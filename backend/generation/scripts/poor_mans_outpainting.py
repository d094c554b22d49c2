"""A1111's "Poor man's outpainting" (img2img): the canvas grows by `Pixels to expand` on the chosen sides (to a
multiple of 64), and every tile of the request's width x height that touches the new area is inpainted (the
new area white in its mask, the original a little inside its edge black); the tiles are blended back as SD
upscale's are. Only the combined image is saved, with the first tile's infotext."""
from __future__ import annotations

import io
import math

from PIL import Image, ImageDraw

from backend.core.requests import IMG2IMG_RANGES, SIZE_RANGE, RequestError
from backend.core.scripts import Script, ScriptArg
from backend.generation.scripts.job import ScriptJob
from backend.generation.scripts.sd_upscale import combine_tiles, split_tiles

SIDES = ("left", "right", "up", "down")
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")

ARGS = (
    ScriptArg("Pixels to expand", 128, "slider", minimum=8, maximum=256, step=8),
    ScriptArg("Mask blur", 4, "slider", minimum=0, maximum=64, step=1),
    ScriptArg("Masked content", "fill", "radio", choices=MASKED_CONTENT, by_index=True),
    ScriptArg("Outpainting direction", list(SIDES), "checkboxgroup", choices=SIDES),
)


def expansion(size: tuple[int, int], pixels: int, direction: list[str]) -> tuple[int, int, int, int, int, int]:
    """(left, right, up, down, width, height): the margins, spread so the canvas is a multiple of 64, as A1111."""
    width, height = size
    left, right, up, down = (pixels if side in direction else 0 for side in SIDES)
    target_w = math.ceil((width + left + right) / 64) * 64
    target_h = math.ceil((height + up + down) / 64) * 64
    if left:
        left = left * (target_w - width) // (left + right)
    if right:
        right = target_w - width - left
    if up:
        up = up * (target_h - height) // (up + down)
    if down:
        down = target_h - height - up
    return left, right, up, down, target_w, target_h


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def run_poor_mans_outpainting(job: ScriptJob):
    pixels, mask_blur, masked_content, direction = job.args
    request = job.request
    if not direction:
        raise RequestError("script_args[3]", "Outpainting direction: choose at least one of left, right, up, down")
    if pixels >= min(request.width, request.height):
        raise RequestError("script_args[0]", f"Pixels to expand: must be smaller than the tile size "
                                             f"{request.width}x{request.height}; got {pixels}")
    source = Image.open(io.BytesIO(request.init_image)).convert("RGB")
    left, right, up, down, width, height = expansion(source.size, pixels, direction)
    if max(width, height) > SIZE_RANGE[1] * 4:
        raise RequestError("script_args[0]", f"the expanded image {width}x{height} is too large")
    canvas = Image.new("RGB", (max(width, request.width), max(height, request.height)))
    canvas.paste(source, (left, up))
    mask = Image.new("L", canvas.size, "white")
    edge = mask_blur * 2  # the original's border is repainted too, so the seam blends
    ImageDraw.Draw(mask).rectangle((left + (edge if left else 0), up + (edge if up else 0),
                                    width - right - (edge if right else 0) - 1,
                                    height - down - (edge if down else 0) - 1), fill="black")
    rows = split_tiles(canvas, request.width, request.height, pixels)
    mask_rows = split_tiles(mask, request.width, request.height, pixels)
    seed = request.seed if request.seed != -1 else job.fixed_seed()
    first, warnings, result = None, [], None
    blur = min(edge, IMG2IMG_RANGES["mask_blur"][1])
    for row, mask_row in zip(rows, mask_rows):
        for tile, tile_mask in zip(row, mask_row):
            inside = (tile.x >= left and tile.x + request.width <= width - right and tile.y >= up
                      and tile.y + request.height <= height - down)
            if inside:  # only the original image: kept as it is
                continue
            result = job.generate(job.build(request, {
                "init_image": _png(tile.image), "mask": _png(tile_mask.image), "seed": seed, "batch_size": 1,
                "n_iter": 1, "save_images": False, "mask_blur": blur, "inpainting_fill": masked_content_index(
                    masked_content), "inpaint_full_res": False, "inpainting_mask_invert": 0, "resize_mode": 0}))
            if result.interrupted or not result.images:
                return result.model_copy(update={"images": [], "interrupted": True})
            first = first or result.images[0]
            warnings += result.warnings
            tile.image = Image.open(io.BytesIO(result.images[0].png)).convert("RGB")
            seed = result.images[0].seed + 1
    combined = combine_tiles(rows, canvas.size, pixels).crop((0, 0, width, height))
    image = job.image_result(combined, first)
    return result.model_copy(update={"images": [image], "warnings": list(dict.fromkeys(warnings))})


def masked_content_index(name: str) -> int:
    return MASKED_CONTENT.index(name)


POOR_MANS_OUTPAINTING = Script("Poor man's outpainting", ARGS, run_poor_mans_outpainting, tabs=("img2img",))
