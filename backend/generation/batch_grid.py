"""A1111's grid of a job's images: when a job makes more than one image (batch count x batch size), the grid is
saved (grid_save, in grid_format, to outdir_grids / outdir_<kind>_grids) and, with return_grid, kept as the
result's `grid`: shown first in the gallery and the API's images (the result's `images` stay the job's images).
A1111 makes it only where images may be saved (its API's save_images); scripts draw their own grids instead."""
from __future__ import annotations

import io

from PIL import Image

from backend.core.options import Options
from backend.core.requests import GenerationRequest, GenerationResult
from backend.generation.scripts.grid_image import grid_rows, image_grid
from backend.jobs.outputs import OutputStore, encode_png


def with_batch_grid(request: GenerationRequest, result: GenerationResult, options: Options, outputs: OutputStore,
                    kind: str) -> GenerationResult:
    images = result.images
    wanted = options.return_grid or options.grid_save
    if not images or not request.save_images or not wanted or (len(images) < 2 and options.grid_only_if_multiple):
        return result
    pictures = [Image.open(io.BytesIO(image.png)) for image in images]
    grid = image_grid(pictures, grid_rows(len(pictures), request.batch_size, options.n_rows))
    first = images[0]  # the grid carries the first image's infotext, as A1111's
    path = outputs.save_grid(grid, kind, first.infotext, "grid", options) if options.grid_save else None
    if not options.return_grid:
        return result
    grid_result = first.model_copy(update={"png": encode_png(grid, first.infotext), "path": path and str(path),
                                           "is_grid": True})
    return result.model_copy(update={"grid": grid_result})
