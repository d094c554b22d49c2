"""How the preprocessors with weights that run here turn an image into a map, as sd-webui-controlnet does it
(scripts/preprocessor/legacy/processor.py and annotator/*/__init__.py): scale the short side to the resolution, pad
with the edge pixels to a multiple of 64, run the network, take the pad off. Maps are RGB uint8."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from backend.controlnet.anime_face_network import anime_face_network
from backend.controlnet.anime_face_runs import run_anime_face_segment
from backend.controlnet.annotator_networks import (
    OPENPOSE_BODY,
    OPENPOSE_FACE,
    OPENPOSE_HAND,
    FilePart,
    hed_network,
    leres_network,
    lineart_anime_network,
    lineart_network,
    midas_network,
    mlsd_network,
    normal_bae_network,
    openpose_body_network,
    openpose_face_network,
    openpose_full_network,
    openpose_hand_network,
    pidinet_network,
    quiet_import,
    teed_network,
)
from backend.controlnet.depth_anything_network import load_depth_anything, load_depth_anything_v2
from backend.controlnet.depth_anything_runs import run_depth_anything
from backend.controlnet.oneformer_runs import ADE20K_RUN, COCO_RUN, load_segmenter
from backend.controlnet.pose_runs import openpose
from backend.controlnet.preprocessors import HIDDEN, Detection, Slider, gray_as_rgb, scaled_and_padded
from backend.controlnet.uniformer_network import load_uniformer
from backend.controlnet.uniformer_runs import run_uniformer


def as_batch(pixels: np.ndarray, divisor: float) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(pixels)).float().div(divisor).permute(2, 0, 1)[None]


def to_uint8(values: np.ndarray) -> np.ndarray:
    return (values * 255.0).clip(0, 255).astype(np.uint8)


def as_scribble(edge: np.ndarray) -> np.ndarray:
    """Thin, blurred and thresholded soft edges: the extension's scribble_hed / scribble_pidinet."""
    util = quiet_import("controlnet_aux.util")
    scribble = cv2.GaussianBlur(util.nms(edge, 127, 3.0), (0, 0), 3.0)
    return np.where(scribble > 4, 255, 0).astype(np.uint8)


def safe_step(edge: np.ndarray, steps: int = 2) -> np.ndarray:
    return quiet_import("controlnet_aux.util").safe_step(edge, steps)


def run_lineart(network: torch.nn.Module, image: np.ndarray, resolution: int, *_thresholds: float) -> np.ndarray:
    padded, height, width = scaled_and_padded(image, resolution)
    with torch.inference_mode():
        line = network(as_batch(padded, 255.0))[0, 0].numpy()
    return gray_as_rgb(255 - to_uint8(line)[:height, :width])  # the network draws white lines on black


def run_lineart_anime(network, image, resolution, *_thresholds):
    """The anime line network takes sides that are multiples of 256: the padded image is scaled up to those, and
    the lines (drawn dark on white) scaled back and inverted."""
    padded, height, width = scaled_and_padded(image, resolution)
    padded_height, padded_width = padded.shape[:2]
    fed = cv2.resize(padded, (-padded_width % 256 + padded_width, -padded_height % 256 + padded_height),
                     interpolation=cv2.INTER_CUBIC)
    with torch.inference_mode():
        line = network(as_batch(fed, 127.5) - 1.0)[0, 0].numpy() * 127.5 + 127.5
    line = cv2.resize(line, (padded_width, padded_height), interpolation=cv2.INTER_CUBIC)
    return gray_as_rgb(255 - line.clip(0, 255).astype(np.uint8)[:height, :width])


def fused_edges(network: torch.nn.Module, image: np.ndarray, resolution: int, safe_steps: int) -> np.ndarray:
    """HED and TEED: side outputs at several scales, each resized to the input, averaged, then a sigmoid. They
    take 0-255 RGB (HED subtracts its learnt mean)."""
    padded, height, width = scaled_and_padded(image, resolution)
    with torch.inference_mode():
        projections = network(as_batch(padded, 1.0))
    size = (padded.shape[1], padded.shape[0])
    edges = np.stack([cv2.resize(p[0, 0].numpy().astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
                      for p in projections], axis=2)
    edge = 1 / (1 + np.exp(-np.mean(edges, axis=2).astype(np.float64)))
    return to_uint8(safe_step(edge, safe_steps) if safe_steps else edge)[:height, :width]


def pidinet_edges(network: torch.nn.Module, image: np.ndarray, resolution: int, safe: bool) -> np.ndarray:
    padded, height, width = scaled_and_padded(image, resolution)
    with torch.inference_mode():
        edge = network(as_batch(padded[:, :, ::-1], 255.0))[-1][0, 0].numpy()  # PiDiNet was trained on BGR
    return to_uint8(safe_step(edge) if safe else edge)[:height, :width]


def run_mlsd(network: torch.nn.Module, image: np.ndarray, resolution: int, score_threshold: float,
             length_threshold: float) -> np.ndarray:
    """M-LSD: straight segments scoring over `score_threshold` and longer than `length_threshold` pixels, drawn one
    pixel wide in white on black (controlnet_aux's pred_lines decodes the network's centre and displacement maps)."""
    padded, height, width = scaled_and_padded(image, resolution)
    pred_lines = quiet_import("controlnet_aux.mlsd.utils").pred_lines
    lines = np.zeros(padded.shape[:2], np.uint8)
    with torch.inference_mode():
        try:
            segments = pred_lines(padded, network, list(padded.shape[:2]), score_threshold, length_threshold)
        except IndexError:  # pred_lines indexes its empty result when no segment passes: a black map
            segments = []
    for x_start, y_start, x_end, y_end in segments:
        cv2.line(lines, (int(x_start), int(y_start)), (int(x_end), int(y_end)), 255, 1)
    return gray_as_rgb(lines[:height, :width])


def midas_depth(network: torch.nn.Module, image: np.ndarray, resolution: int) -> tuple[torch.Tensor, int, int]:
    """MiDaS's relative inverse depth (near is high) of the padded image, with the size to keep."""
    padded, height, width = scaled_and_padded(image, resolution)
    with torch.inference_mode():
        return network(as_batch(padded, 127.5) - 1.0)[0], height, width


def normalized(depth: torch.Tensor) -> np.ndarray:
    scaled = depth - torch.min(depth)
    return (scaled / torch.max(scaled)).numpy()


def run_depth(network, image, resolution, *_thresholds):
    depth, height, width = midas_depth(network, image, resolution)
    return gray_as_rgb(to_uint8(normalized(depth))[:height, :width])


def run_midas_normal(network, image, resolution, background_threshold, _threshold_b, bend=np.pi * 2.0):
    """Normals from the depth's gradients; where the depth is under `background_threshold` (far) the surface faces
    the camera. `bend` weighs the facing component against the gradients (the extension's fixed 2*pi)."""
    depth, height, width = midas_depth(network, image, resolution)
    near = normalized(depth)
    depth = depth.numpy()
    x = cv2.Sobel(depth, cv2.CV_32F, 1, 0, ksize=3)
    y = cv2.Sobel(depth, cv2.CV_32F, 0, 1, ksize=3)
    x[near < background_threshold] = 0
    y[near < background_threshold] = 0
    normal = np.stack([x, y, np.full_like(x, bend)], axis=2)
    normal /= np.sum(normal ** 2.0, axis=2, keepdims=True) ** 0.5
    return (normal * 127.5 + 127.5).clip(0, 255).astype(np.uint8)[:height, :width, ::-1].copy()


def run_leres(network, image, resolution, remove_near, remove_background):
    """LeReS's depth (far is high) on the padded image, spread over 16 bits then 8 as the extension does; with
    `remove_near` (percent) the near end up to that level is zeroed before inverting, with `remove_background`
    the far end after."""
    padded, height, width = scaled_and_padded(image, resolution)
    estimate = quiet_import("controlnet_aux.leres.leres.depthmap").estimateleres
    with torch.inference_mode():
        depth = estimate(padded, network, padded.shape[1], padded.shape[0])
    low, high = depth.min(), depth.max()
    spread = 65535 * (depth - low) / (high - low) if high - low > np.finfo("float").eps else np.zeros(depth.shape)
    depth_map = cv2.convertScaleAbs(spread.astype(np.uint16), alpha=255.0 / 65535.0)
    if remove_near:
        depth_map = cv2.threshold(depth_map, remove_near / 100 * 255, 255, cv2.THRESH_TOZERO)[1]
    depth_map = cv2.bitwise_not(depth_map)
    if remove_background:
        depth_map = cv2.threshold(depth_map, remove_background / 100 * 255, 255, cv2.THRESH_TOZERO)[1]
    return gray_as_rgb(depth_map[:height, :width])


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def run_normal_bae(network, image, resolution, *_thresholds):
    """Bae et al.'s normals: the last refinement's first three channels, from [-1, 1] to RGB."""
    from torchvision.transforms.functional import normalize

    padded, height, width = scaled_and_padded(image, resolution)
    with torch.inference_mode():
        normal = network(normalize(as_batch(padded, 255.0), IMAGENET_MEAN, IMAGENET_STD))[0][-1][:, :3]
        normal = ((normal + 1) * 0.5).clip(0, 1)
    return to_uint8(normal[0].permute(1, 2, 0).numpy())[:height, :width].copy()


@dataclass(frozen=True)
class NetworkRun:
    """A preprocessor that runs a network: how to build the (empty) network, and how to apply it. A network filled
    from several files names the part each fills, in the order of the preprocessor's files (annotator_files)."""

    build: Callable[..., torch.nn.Module]
    # network, image, resolution, slider 1 (threshold_a), slider 2 (threshold_b): the map (openpose: a Detection)
    apply: Callable[[torch.nn.Module, np.ndarray, int, float, float], np.ndarray | Detection]
    slider_1: Slider = field(default=HIDDEN)
    slider_2: Slider = field(default=HIDDEN)
    parts: tuple[FilePart, ...] = ()
    sized_by_file: bool = False  # `build(paths, field)` reads the file to size the network, and fills it


def hed(safe=False, scribble=False):
    def apply(network, image, resolution, *_thresholds):
        edge = fused_edges(network, image, resolution, 2 if safe else 0)
        return gray_as_rgb(as_scribble(edge) if scribble else edge)
    return NetworkRun(hed_network, apply)


def run_teed(network, image, resolution, safe_steps, _threshold_b):
    return gray_as_rgb(fused_edges(network, image, resolution, int(safe_steps)))


def pidinet(safe=False, scribble=False):
    def apply(network, image, resolution, *_thresholds):
        edge = pidinet_edges(network, image, resolution, safe)
        return gray_as_rgb(as_scribble(edge) if scribble else edge)
    return NetworkRun(pidinet_network, apply)


# by the extension's internal names (annotator_files.WEIGHTED)
NETWORK_RUNS = {
    "lineart": NetworkRun(lineart_network, run_lineart),
    "lineart_coarse": NetworkRun(lineart_network, run_lineart),
    "lineart_anime": NetworkRun(lineart_anime_network, run_lineart_anime),
    "hed": hed(),
    "hed_safe": hed(safe=True),
    "scribble_hed": hed(scribble=True),
    "pidinet": pidinet(),
    "pidinet_safe": pidinet(safe=True),
    "pidinet_scribble": pidinet(scribble=True),
    "softedge_teed": NetworkRun(teed_network, run_teed,
                                Slider(label="Safe Steps", minimum=0, maximum=10, value=2, step=1)),
    "depth": NetworkRun(midas_network, run_depth),
    "normal_map": NetworkRun(midas_network, run_midas_normal, Slider(label="Normal Background Threshold", minimum=0.0,
                                                                     maximum=1.0, value=0.4, step=0.01)),
    "normal_bae": NetworkRun(normal_bae_network, run_normal_bae),
    "depth_leres": NetworkRun(leres_network, run_leres,
                              Slider(label="Remove Near %", minimum=0, maximum=100, value=0, step=0.1),
                              Slider(label="Remove Background %", minimum=0, maximum=100, value=0, step=0.1)),
    "mlsd": NetworkRun(mlsd_network, run_mlsd,
                       Slider(label="MLSD Value Threshold", minimum=0.01, maximum=2.0, value=0.1, step=0.01),
                       Slider(label="MLSD Distance Threshold", minimum=0.01, maximum=20.0, value=0.1, step=0.01)),
    "openpose": NetworkRun(openpose_body_network, openpose(), parts=(OPENPOSE_BODY,)),
    "openpose_hand": NetworkRun(openpose_hand_network, openpose(hand=True), parts=(OPENPOSE_BODY, OPENPOSE_HAND)),
    "openpose_face": NetworkRun(openpose_face_network, openpose(face=True), parts=(OPENPOSE_BODY, OPENPOSE_FACE)),
    "openpose_faceonly": NetworkRun(openpose_face_network, openpose(body=False, face=True),
                                    parts=(OPENPOSE_BODY, OPENPOSE_FACE)),
    "openpose_full": NetworkRun(openpose_full_network, openpose(hand=True, face=True),
                                parts=(OPENPOSE_BODY, OPENPOSE_HAND, OPENPOSE_FACE)),
    "segmentation": NetworkRun(load_uniformer, run_uniformer, sized_by_file=True),
    "oneformer_ade20k": NetworkRun(load_segmenter, ADE20K_RUN, sized_by_file=True),
    "oneformer_coco": NetworkRun(load_segmenter, COCO_RUN, sized_by_file=True),
    "anime_face_segment": NetworkRun(anime_face_network, run_anime_face_segment),
    "depth_anything": NetworkRun(load_depth_anything, run_depth_anything, sized_by_file=True),
    "depth_anything_v2": NetworkRun(load_depth_anything_v2, run_depth_anything, sized_by_file=True),
}
