"""seg_ufade20k as sd-webui-controlnet makes it (annotator/uniformer through mmseg's inference_segmentor, config
upernet_global_small): the image scaled to the preprocessor resolution and edge-padded, then rescaled keeping its
aspect to fit 2048x512 (long x short side; OpenCV bilinear), normalised, run whole (the config's test mode, no
sliding window), the scores scaled to the input and then to the padded image, each pixel's class coloured with the
ADE20K palette, the pad taken off."""
from __future__ import annotations

import cv2
import numpy as np
import torch

from backend.controlnet.oneformer_runs import coloured
from backend.controlnet.preprocessors import scaled_and_padded
from backend.controlnet.segmentation_palettes import ADE20K_COLORS
from backend.controlnet.uniformer_network import UniFormerUperNet

TEST_SCALE = (2048, 512)  # the dataset config's img_scale: the long side at most 2048, the short side at most 512
PIXEL_MEAN, PIXEL_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)  # the config's img_norm_cfg (RGB order)


def rescaled_size(height: int, width: int) -> tuple[int, int]:
    """mmcv's rescale_size: one factor that fits both limits, sizes rounded half up."""
    factor = min(max(TEST_SCALE) / max(height, width), min(TEST_SCALE) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def model_input(image: np.ndarray) -> torch.Tensor:
    """The test pipeline on an RGB uint8 image. mmseg reads its images as BGR and its normalisation swaps them to
    RGB; the extension hands it RGB, so the network sees the channels reversed. Kept, so the maps (and the
    ControlNet trained on them) match the extension's."""
    height, width = rescaled_size(*image.shape[:2])
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR).astype(np.float32)[:, :, ::-1]
    normalised = (resized - np.float32(PIXEL_MEAN)) * (1.0 / np.float64(PIXEL_STD)).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(normalised)).permute(2, 0, 1)[None]


def segment_labels(network: UniFormerUperNet, image: np.ndarray) -> np.ndarray:
    pixels = model_input(image)
    interpolate = torch.nn.functional.interpolate
    with torch.inference_mode():
        scores = interpolate(network(pixels), size=pixels.shape[-2:], mode="bilinear", align_corners=False)
        scores = interpolate(scores, size=image.shape[:2], mode="bilinear", align_corners=False)
        return scores.softmax(dim=1)[0].argmax(dim=0).numpy()


def run_uniformer(network: UniFormerUperNet, image: np.ndarray, resolution: int, *_thresholds) -> np.ndarray:
    padded, height, width = scaled_and_padded(image, resolution)
    return coloured(segment_labels(network, padded), ADE20K_COLORS)[:height, :width].copy()
