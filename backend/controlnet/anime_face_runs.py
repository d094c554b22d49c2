"""seg_anime_face as sd-webui-controlnet makes it (annotator/anime_face_segment): the image scaled to the
preprocessor resolution and edge-padded to multiples of 64, rescaled (PIL bicubic, torchvision's Resize) to 512 on
its short side, the size the U-Net was trained at, in [0, 1], each pixel's most likely class coloured with the
extension's palette, the pad taken off.

The extension takes the pad off the 512-side map, so at other resolutions it keeps a corner of the map (or all of it,
at the wrong size); the map is scaled back to the padded image first here, so that it covers the image at any
resolution and, at 512 (the default), is the extension's pixel for pixel."""
from __future__ import annotations

import cv2
import numpy as np
import torch
from PIL import Image

from backend.controlnet.anime_face_network import AnimeFaceUNet
from backend.controlnet.oneformer_runs import coloured
from backend.controlnet.preprocessors import scaled_and_padded
from backend.controlnet.segmentation_palettes import ANIME_FACE_COLORS

NETWORK_SIZE = 512  # the short side the U-Net sees


def model_input(image: np.ndarray) -> torch.Tensor:
    from torchvision.transforms import InterpolationMode, functional

    resized = functional.resize(Image.fromarray(image), NETWORK_SIZE, interpolation=InterpolationMode.BICUBIC)
    return functional.to_tensor(resized)[None]


def segment_labels(network: AnimeFaceUNet, image: np.ndarray) -> np.ndarray:
    """Each pixel's class, at the image's size (the first of equal scores, as numpy's argmax in the extension)."""
    with torch.inference_mode():
        scores = network(model_input(image))[0].numpy()
    labels = scores.argmax(axis=0).astype(np.uint8)
    return cv2.resize(labels, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)


def run_anime_face_segment(network: AnimeFaceUNet, image: np.ndarray, resolution: int, *_thresholds) -> np.ndarray:
    padded, height, width = scaled_and_padded(image, resolution)
    return coloured(segment_labels(network, padded), ANIME_FACE_COLORS)[:height, :width].copy()
