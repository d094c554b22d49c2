"""depth_anything and depth_anything_v2 as sd-webui-controlnet makes them (annotator/depth_anything.py and
depth_anything_v2.py, called with colored=False): the image scaled to the preprocessor resolution and edge-padded,
then resized keeping its aspect so both sides are at least 518 and multiples of 14 (bicubic, on 0-1 floats),
normalised with ImageNet's mean and deviation, run; the relative depth (near is high) scaled bilinearly to the padded
image, spread over 0-255 and truncated to 8 bits, the pad taken off."""
from __future__ import annotations

import cv2
import numpy as np
import torch

from backend.controlnet.preprocessors import gray_as_rgb, scaled_and_padded

INPUT_SIDE = 518  # the transform's width and height: the lower bound of both sides
MULTIPLE = 14  # the ViT's patch
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def side_multiple(value: float, at_least: int) -> int:
    """The transform's constrain_to_multiple_of: the nearest multiple (numpy rounds halves to even), raised to the
    next one when that falls under `at_least`."""
    nearest = int(np.round(value / MULTIPLE) * MULTIPLE)
    return nearest if nearest >= at_least else int(np.ceil(value / MULTIPLE) * MULTIPLE)


def input_size(height: int, width: int) -> tuple[int, int]:
    """Its Resize with keep_aspect_ratio and "lower_bound": one scale, the larger of the two that reach 518."""
    scale = max(INPUT_SIDE / height, INPUT_SIDE / width)
    return side_multiple(scale * height, INPUT_SIDE), side_multiple(scale * width, INPUT_SIDE)


def model_input(image: np.ndarray) -> torch.Tensor:
    """The transform on an RGB uint8 image. The annotator converts "BGR to RGB" an image the extension hands it as
    RGB, so the network sees the channels reversed; kept, so the maps (and the ControlNet trained on them) match."""
    pixels = cv2.cvtColor(image, cv2.COLOR_BGR2RGB) / 255.0
    height, width = input_size(*image.shape[:2])
    pixels = cv2.resize(pixels, (width, height), interpolation=cv2.INTER_CUBIC)
    pixels = (pixels - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)).astype(np.float32))[None]


def depth_map(network, image: np.ndarray) -> np.ndarray:
    """The relative depth of `image` as 8-bit levels at its size; a flat depth (nothing to spread) is black."""
    with torch.inference_mode():
        depth = network(pixel_values=model_input(image)).predicted_depth
        depth = torch.nn.functional.interpolate(depth[None], image.shape[:2], mode="bilinear",
                                                align_corners=False)[0, 0]
    low, high = depth.min(), depth.max()
    if high <= low:
        return np.zeros(image.shape[:2], np.uint8)
    return ((depth - low) / (high - low) * 255.0).numpy().astype(np.uint8)


def run_depth_anything(network, image: np.ndarray, resolution: int, *_thresholds) -> np.ndarray:
    padded, height, width = scaled_and_padded(image, resolution)
    return gray_as_rgb(depth_map(network, padded)[:height, :width].copy())
