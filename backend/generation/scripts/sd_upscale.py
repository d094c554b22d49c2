"""A1111's "SD upscale" (img2img): the image is upscaled with an upscaler, cut into overlapping tiles of the
request's width x height, each tile goes through img2img, and the tiles are blended back together (A1111's
split_grid / combine_grid). Only the combined image is saved, with the first tile's infotext and "SD upscale
overlap" / "SD upscale upscaler"."""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from backend.core.requests import SIZE_RANGE, RequestError
from backend.core.scripts import Script, ScriptArg
from backend.generation.scripts.job import ScriptJob

MAX_TILES = 256


@dataclass
class Tile:
    x: int
    y: int
    image: Image.Image


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Where the tiles along one side start: evenly spread, the last one flush with the end."""
    count = math.ceil((length - overlap) / (tile - overlap)) if length > tile else 1
    step = (length - tile) / (count - 1) if count > 1 else 0
    return [min(int(i * step), max(0, length - tile)) for i in range(count)]


def split_tiles(image: Image.Image, width: int, height: int, overlap: int) -> list[list[Tile]]:
    return [[Tile(x, y, image.crop((x, y, x + width, y + height)))
             for x in tile_origins(image.width, width, overlap)]
            for y in tile_origins(image.height, height, overlap)]


def _ramp(length: int, across: int, horizontal: bool) -> Image.Image:
    ramp = (np.arange(length, dtype=np.float32) * 255 / max(1, length)).astype(np.uint8)
    mask = np.repeat(ramp[None, :], across, axis=0) if horizontal else np.repeat(ramp[:, None], across, axis=1)
    return Image.fromarray(mask, "L")


def combine_tiles(rows: list[list[Tile]], size: tuple[int, int], overlap: int) -> Image.Image:
    """Each tile over the previous one, its first `overlap` pixels faded in from the left (and each row's from the
    top), as A1111's combine_grid."""
    width, height = size
    combined = Image.new("RGB", size)
    for row in rows:
        tile_height = row[0].image.height
        line = Image.new("RGB", (width, tile_height))
        for index, tile in enumerate(row):
            if index == 0 or overlap == 0:
                line.paste(tile.image, (tile.x, 0))
                continue
            line.paste(tile.image.crop((0, 0, overlap, tile_height)), (tile.x, 0),
                       mask=_ramp(overlap, tile_height, horizontal=True))
            line.paste(tile.image.crop((overlap, 0, tile.image.width, tile_height)), (tile.x + overlap, 0))
        y = row[0].y
        if y == 0 or overlap == 0:
            combined.paste(line, (0, y))
            continue
        combined.paste(line.crop((0, 0, width, overlap)), (0, y), mask=_ramp(overlap, width, horizontal=False))
        combined.paste(line.crop((0, overlap, width, tile_height)), (0, y + overlap))
    return combined


def run_sd_upscale(job: ScriptJob):
    _info, overlap, upscaler, scale = job.args
    request = job.request
    if overlap >= min(request.width, request.height):
        raise RequestError("script_args[1]", f"Tile overlap: must be smaller than the tile size "
                                             f"{request.width}x{request.height}; got {overlap}")
    source = Image.open(io.BytesIO(request.init_image)).convert("RGB")
    size = (round(source.width * scale), round(source.height * scale))
    if max(size) > SIZE_RANGE[1] * 4:
        raise RequestError("script_args[3]", f"Scale Factor: the upscaled image {size[0]}x{size[1]} is too large")
    upscaled = source if upscaler == "None" else job.upscale(source, upscaler, size)
    if upscaled.width < request.width or upscaled.height < request.height:  # tiles are never larger than the image
        canvas = Image.new("RGB", (max(upscaled.width, request.width), max(upscaled.height, request.height)))
        canvas.paste(upscaled)
        upscaled = canvas
    rows = split_tiles(upscaled, request.width, request.height, overlap)
    tiles = [tile for row in rows for tile in row]
    if len(tiles) > MAX_TILES:
        raise RequestError("script_args[3]", f"SD upscale: {len(tiles)} tiles of {request.width}x{request.height}; "
                                             f"at most {MAX_TILES} (raise the tile size or lower the scale)")
    seed = request.seed if request.seed != -1 else job.fixed_seed()
    images, first, warnings = [], None, []
    for batch in range(request.n_iter):
        batch_seed = seed + batch
        for tile in tiles:  # A1111 batches tiles by batch_size; the seeds follow one after another as here
            buffer = io.BytesIO()
            tile.image.save(buffer, format="PNG")
            result = job.generate(job.build(request, {
                "init_image": buffer.getvalue(), "seed": batch_seed, "batch_size": 1, "n_iter": 1,
                "save_images": False, "mask": None, "resize_mode": 0}))
            if result.interrupted or not result.images:
                return result.model_copy(update={"images": images, "interrupted": True})
            first = first or result.images[0]
            warnings += result.warnings
            tile.image = Image.open(io.BytesIO(result.images[0].png)).convert("RGB")
            batch_seed = result.images[0].seed + 1
        combined = combine_tiles(rows, upscaled.size, overlap)
        image = job.image_result(combined, first.model_copy(update={"seed": seed + batch}),
                                 {"SD upscale overlap": overlap, "SD upscale upscaler": upscaler})
        images.append(image)
    return result.model_copy(update={"images": images, "warnings": list(dict.fromkeys(warnings))})


def sd_upscale_script(upscaler_names: list[str]) -> Script:
    names = tuple(dict.fromkeys(["None", *upscaler_names]))
    return Script("SD upscale", (
        ScriptArg("Info", "", "text", hidden=True),
        ScriptArg("Tile overlap", 64, "slider", minimum=0, maximum=256, step=16),
        ScriptArg("Upscaler", names[0], "radio", choices=names, by_index=True),
        ScriptArg("Scale Factor", 2.0, "slider", minimum=1.0, maximum=4.0, step=0.05),
    ), run_sd_upscale, tabs=("img2img",))
