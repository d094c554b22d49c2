"""Run an image-to-image network over a large image in overlapping tiles, blended without seams.

Each tile's output is weighted by a ramp across the overlap on every side that borders another tile, so
a pixel near one tile's edge (where that tile lacked context) takes its value from the neighbour that saw
it well inside, and the hand-over between tiles is gradual, so no seam shows. On out-of-memory the tile
size is halved and the image retried.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from backend.core.errors import is_out_of_memory
from backend.models.devices import free_accelerator_memory
from backend.upscale.model_files import UpscalerError

log = logging.getLogger(__name__)
MIN_TILE = 32  # smaller tiles leave too little context for the network; below this we give up
Network = Callable[[torch.Tensor], torch.Tensor]  # (1, 3, h, w) in [0, 1] -> (1, 3, h*s, w*s)


class TileOutOfMemory(UpscalerError):
    """Out of memory even with the smallest tiles."""


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering [0, length) with tiles of `tile` sharing at least `overlap` pixels; the
    last tile is moved back to end exactly at `length` (so it may overlap its neighbour more)."""
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def _ramp(start: int, size: int, total: int, overlap: int, scale: int) -> torch.Tensor:
    """Blend weights along one axis of one tile's output. Towards each edge that has a neighbouring tile the
    weight is 0 for the outer quarter of the overlap (where the tile lacked context), then rises linearly
    across the middle half to 1: the neighbour, which sees those pixels well inside, supplies them."""
    positions = torch.arange(size * scale, dtype=torch.float32) + 0.5
    weight = torch.ones(size * scale)
    band = overlap * scale
    if band > 0:
        if start > 0:
            weight = torch.minimum(weight, ((positions - band / 4) / (band / 2)).clamp(0, 1))
        if start + size < total:
            weight = torch.minimum(weight, ((size * scale - positions - band / 4) / (band / 2)).clamp(0, 1))
    return weight.clamp_min(1e-6)  # every output pixel keeps some weight, so the division below is safe


def run_tiled(network: Network, image: torch.Tensor, tile: int, overlap: int, check: Callable | None = None
              ) -> torch.Tensor:
    """image: (1, C, H, W). tile 0 (or an image no larger than one tile) runs the whole image at once."""
    _, _, height, width = image.shape
    if tile <= 0 or (height <= tile and width <= tile):
        return network(image).float()
    overlap = min(overlap, tile // 4)  # a halved tile after out-of-memory keeps a sensible step
    output = weights = None
    scale = 1
    for top in tile_starts(height, tile, overlap):
        for left in tile_starts(width, tile, overlap):
            if check:
                check()
            patch = image[..., top:top + tile, left:left + tile]
            result = network(patch).float()
            if output is None:  # the real scale, from the network's own output
                scale = result.shape[-1] // patch.shape[-1]
                output = torch.zeros(1, result.shape[1], height * scale, width * scale, device=result.device)
                weights = torch.zeros(1, 1, height * scale, width * scale, device=result.device)
            ramp_y = _ramp(top, patch.shape[-2], height, overlap, scale).to(result.device)
            ramp_x = _ramp(left, patch.shape[-1], width, overlap, scale).to(result.device)
            weight = ramp_y[:, None] * ramp_x[None, :]
            rows = slice(top * scale, top * scale + result.shape[-2])
            cols = slice(left * scale, left * scale + result.shape[-1])
            output[..., rows, cols] += result * weight
            weights[..., rows, cols] += weight
    return output / weights


def run_with_oom_retry(network: Network, image: torch.Tensor, tile: int, overlap: int,
                       check: Callable | None = None) -> torch.Tensor:
    """run_tiled, halving the tile size on out-of-memory until MIN_TILE."""
    while True:
        try:
            return run_tiled(network, image, tile, overlap, check)
        except RuntimeError as error:
            if not is_out_of_memory(error):
                raise
            smaller = (tile or max(image.shape[-2:])) // 2
            free_accelerator_memory()
            if smaller < MIN_TILE:
                raise TileOutOfMemory(f"out of memory even with {tile or max(image.shape[-2:])}px tiles; "
                                      "free memory or use a smaller image") from None
            log.warning("upscaler ran out of memory with %spx tiles; retrying with %dpx tiles",
                        tile or "whole-image", smaller)
            tile = smaller


def image_to_tensor(image: Image.Image, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].to(device=device, dtype=dtype)


def tensor_to_image(tensor: torch.Tensor) -> Image.Image:
    pixels = tensor[0].float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(pixels))
