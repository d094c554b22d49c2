"""Fitting a detected map to the generation size with sd-webui-controlnet's resize modes, and its pixel-perfect
preprocessor resolution."""
from __future__ import annotations

import cv2
import numpy as np

from backend.core.control_modes import ResizeMode


def pixel_perfect_resolution(image_height: int, image_width: int, target_height: int, target_width: int,
                             resize_mode: ResizeMode) -> int:
    """The preprocessor resolution at which the map's short side lands on the target without rescaling: the
    whole image fits for Resize and Fill, the target is covered otherwise (the extension's formula)."""
    scale_h = target_height / image_height
    scale_w = target_width / image_width
    scale = min(scale_h, scale_w) if resize_mode == ResizeMode.RESIZE_AND_FILL else max(scale_h, scale_w)
    return int(np.round(scale * min(image_height, image_width)))


def resize_map(detected: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resized so that maps stay maps: few colours (segmentation, poses) nearest-neighbour, binary maps (edges,
    scribbles) back to pure black and white, the rest area (down) or cubic (up). The inpaint alpha mask stays
    binary."""
    if detected.shape[:2] == (height, width):
        return detected
    colour, alpha = (detected[:, :, :3], detected[:, :, 3]) if detected.shape[2] == 4 else (detected, None)
    distinct = len(np.unique(colour.reshape(-1, 3)[:: max(1, colour.size // 3 // 65536)], axis=0))
    binary = distinct == 2 and colour.min() < 16 and colour.max() > 240
    if 2 < distinct < 200:
        interpolation = cv2.INTER_NEAREST
    elif width * height < detected.shape[0] * detected.shape[1]:
        interpolation = cv2.INTER_AREA
    else:
        interpolation = cv2.INTER_CUBIC
    resized = cv2.resize(colour, (width, height), interpolation=interpolation)
    if binary:
        gray = resized.astype(np.float32).mean(axis=2).clip(0, 255).astype(np.uint8)
        _, gray = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        resized = np.stack([gray] * 3, axis=2)
    if alpha is not None:
        alpha = np.where(cv2.resize(alpha, (width, height), interpolation=interpolation) > 127, 255, 0)
        resized = np.concatenate([resized, alpha[:, :, None].astype(np.uint8)], axis=2)
    return np.ascontiguousarray(resized)


def fit_map(detected: np.ndarray, resize_mode: ResizeMode, width: int, height: int) -> np.ndarray:
    """`detected` (H, W, 3 or 4) as a width x height map: stretched (Just Resize), scaled to cover and centre-
    cropped (Crop and Resize), or scaled to fit and padded with the median border colour (Resize and Fill)."""
    if resize_mode == ResizeMode.JUST_RESIZE:
        return resize_map(detected, width, height)
    old_height, old_width = detected.shape[:2]
    scale_h, scale_w = height / old_height, width / old_width
    if resize_mode == ResizeMode.RESIZE_AND_FILL:
        scale = min(scale_h, scale_w)
        borders = np.concatenate([detected[0], detected[-1], detected[:, 0], detected[:, -1]], axis=0)
        fill = np.median(borders, axis=0).astype(detected.dtype)
        if fill.shape[0] == 4:
            fill[3] = 255  # the padding is new area: an inpaint unit repaints it
        canvas = np.tile(fill[None, None], (height, width, 1))
        inner = resize_map(detected, max(1, round(old_width * scale)), max(1, round(old_height * scale)))
        top, left = max(0, (height - inner.shape[0]) // 2), max(0, (width - inner.shape[1]) // 2)
        canvas[top:top + inner.shape[0], left:left + inner.shape[1]] = inner[:height, :width]
        return canvas
    scale = max(scale_h, scale_w)
    outer = resize_map(detected, max(width, round(old_width * scale)), max(height, round(old_height * scale)))
    top, left = (outer.shape[0] - height) // 2, (outer.shape[1] - width) // 2
    return np.ascontiguousarray(outer[top:top + height, left:left + width])
