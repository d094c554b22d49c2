"""RetinaFace (ResNet-50), the face detector A1111 uses through facexlib, for when its weights file
(`detection_Resnet50_Final.pth`) is in models/GFPGAN/: boxes and five landmarks (eyes, nose, mouth corners) per face.

The network is built here with the module names of the published file, so it loads with strict key checking; the
file is read by the safe reader like every other weight file. Detection follows facexlib: BGR pixels minus the
training mean, the shorter side brought up to 640 pixels, anchors on three feature levels, a 0.8 score threshold
and non-maximum suppression.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from backend.models.construction import ModelConstruction
from backend.models.weight_files import CheckpointError, read_weights, require_flat_tensors

RETINAFACE_FILE = "detection_Resnet50_Final.pth"
BGR_MEAN = (104.0, 117.0, 123.0)
ANCHOR_SIZES = ((16, 32), (64, 128), (256, 512))  # per feature level, in pixels
STRIDES = (8, 16, 32)
VARIANCES = (0.1, 0.2)
SCORE_THRESHOLD = 0.8
NMS_THRESHOLD = 0.4
DETECTION_SHORT_SIDE = 640  # small images are enlarged to this for detection (A1111 asks facexlib for 640)
DETECTION_MAX_SIDE = 2048  # and large ones are not detected above this
MIN_EYE_DISTANCE = 5  # pixels; closer eyes are no usable face (A1111's eye_dist_threshold)
MAX_FACES = 50  # the most confident ones; each costs a run of the face network
CHANNELS = 256


def _conv_norm(inputs: int, outputs: int, kernel: int, relu: bool) -> nn.Sequential:
    layers = [nn.Conv2d(inputs, outputs, kernel, 1, kernel // 2, bias=False), nn.BatchNorm2d(outputs)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class _ContextModule(nn.Module):
    """Three receptive fields (3x3, 5x5 and 7x7 as stacked 3x3 convolutions), concatenated."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv3X3 = _conv_norm(channels, channels // 2, 3, relu=False)
        self.conv5X5_1 = _conv_norm(channels, channels // 4, 3, relu=True)
        self.conv5X5_2 = _conv_norm(channels // 4, channels // 4, 3, relu=False)
        self.conv7X7_2 = _conv_norm(channels // 4, channels // 4, 3, relu=True)
        self.conv7x7_3 = _conv_norm(channels // 4, channels // 4, 3, relu=False)

    def forward(self, x):
        wide = self.conv5X5_1(x)
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(wide), self.conv7x7_3(self.conv7X7_2(wide))], 1))


class _Pyramid(nn.Module):
    def __init__(self, inputs: tuple[int, int, int], channels: int):
        super().__init__()
        self.output1 = _conv_norm(inputs[0], channels, 1, relu=True)
        self.output2 = _conv_norm(inputs[1], channels, 1, relu=True)
        self.output3 = _conv_norm(inputs[2], channels, 1, relu=True)
        self.merge1 = _conv_norm(channels, channels, 3, relu=True)
        self.merge2 = _conv_norm(channels, channels, 3, relu=True)

    def forward(self, features):
        fine, middle, coarse = self.output1(features[0]), self.output2(features[1]), self.output3(features[2])
        middle = self.merge2(middle + F.interpolate(coarse, size=middle.shape[-2:], mode="nearest"))
        fine = self.merge1(fine + F.interpolate(middle, size=fine.shape[-2:], mode="nearest"))
        return [fine, middle, coarse]


class _Head(nn.Module):
    def __init__(self, channels: int, values: int, anchors: int = 2):
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(channels, anchors * values, 1)

    def forward(self, x):
        return self.conv1x1(x).permute(0, 2, 3, 1).reshape(x.shape[0], -1, self.values)


class RetinaFace(nn.Module):
    def __init__(self):
        super().__init__()
        from torchvision.models import resnet50
        from torchvision.models._utils import IntermediateLayerGetter

        self.body = IntermediateLayerGetter(resnet50(weights=None), {"layer2": 1, "layer3": 2, "layer4": 3})
        self.fpn = _Pyramid((512, 1024, 2048), CHANNELS)
        self.ssh1, self.ssh2, self.ssh3 = (_ContextModule(CHANNELS) for _ in range(3))
        self.ClassHead = nn.ModuleList(_Head(CHANNELS, 2) for _ in range(3))
        self.BboxHead = nn.ModuleList(_Head(CHANNELS, 4) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(_Head(CHANNELS, 10) for _ in range(3))

    def forward(self, x):
        levels = self.fpn(list(self.body(x).values()))
        features = [self.ssh1(levels[0]), self.ssh2(levels[1]), self.ssh3(levels[2])]
        boxes = torch.cat([head(f) for head, f in zip(self.BboxHead, features)], 1)
        scores = torch.cat([head(f) for head, f in zip(self.ClassHead, features)], 1).softmax(-1)
        landmarks = torch.cat([head(f) for head, f in zip(self.LandmarkHead, features)], 1)
        return boxes, scores, landmarks


def load_retinaface(path: Path, construction: ModelConstruction) -> RetinaFace:
    """The detector from facexlib's published file (keys optionally prefixed "module."), eval mode, CPU."""
    raw = read_weights(path)  # a pickle that carries code is refused here
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path.name} does not hold a dictionary of weights")
    state = {key.removeprefix("module."): value for key, value in raw.items()}
    require_flat_tensors(state, path)
    with construction.building():
        network = RetinaFace()
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path.name} is not facexlib's RetinaFace ResNet-50 detector "
                              f"({str(error).splitlines()[0]})") from None
    return network.eval()


def anchors(height: int, width: int) -> torch.Tensor:
    """Every anchor as (centre x, centre y, width, height), relative to the image, in the heads' order: by level,
    then row, column and anchor size."""
    levels = []
    for sizes, stride in zip(ANCHOR_SIZES, STRIDES):
        rows, columns = math.ceil(height / stride), math.ceil(width / stride)
        y, x = torch.meshgrid(torch.arange(rows), torch.arange(columns), indexing="ij")
        centres = torch.stack([(x + 0.5) * stride / width, (y + 0.5) * stride / height], -1)  # rows, columns, 2
        sides = torch.tensor([(size / width, size / height) for size in sizes])  # sizes, 2
        level = torch.cat([centres[:, :, None].expand(rows, columns, len(sizes), 2),
                           sides[None, None].expand(rows, columns, len(sizes), 2)], -1)
        levels.append(level.reshape(-1, 4))
    return torch.cat(levels).float()


def decode(boxes: torch.Tensor, scores: torch.Tensor, landmarks: torch.Tensor, priors: torch.Tensor,
           size: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """One image's head outputs -> [(box x1 y1 x2 y2, five (x, y) landmarks)] in pixels, best first."""
    from torchvision.ops import nms

    width, height = size
    keep = scores[:, 1] > SCORE_THRESHOLD
    boxes, scores, landmarks, priors = boxes[keep], scores[keep, 1], landmarks[keep], priors[keep]
    centres = priors[:, :2] + boxes[:, :2] * VARIANCES[0] * priors[:, 2:]
    sides = priors[:, 2:] * torch.exp(boxes[:, 2:] * VARIANCES[1])
    corners = torch.cat([centres - sides / 2, centres + sides / 2], 1) * torch.tensor([width, height] * 2)
    points = priors[:, None, :2] + landmarks.reshape(-1, 5, 2) * VARIANCES[0] * priors[:, None, 2:]
    points = points * torch.tensor([width, height])
    finite = torch.isfinite(corners).all(1) & torch.isfinite(points).all(2).all(1)  # a damaged file can overflow
    corners, points, scores = corners[finite], points[finite], scores[finite]
    chosen = nms(corners, scores, NMS_THRESHOLD)[:MAX_FACES]
    return [(corners[index].numpy(), points[index].numpy()) for index in chosen.tolist()]


def detection_scale(height: int, width: int) -> float:
    scale = max(1.0, DETECTION_SHORT_SIDE / min(height, width))
    return min(scale, DETECTION_MAX_SIDE / max(height, width)) if max(height, width) * scale > DETECTION_MAX_SIDE \
        else scale


@torch.inference_mode()
def detect(network: RetinaFace, rgb: np.ndarray, device: torch.device) -> list[tuple[np.ndarray, np.ndarray]]:
    """Faces in an RGB uint8 image: [(box, landmarks)] in the image's pixels."""
    import cv2

    height, width = rgb.shape[:2]
    scale = detection_scale(height, width)
    image = rgb if scale == 1 else cv2.resize(rgb, (round(width * scale), round(height * scale)),
                                              interpolation=cv2.INTER_LINEAR)
    bgr = torch.from_numpy(np.ascontiguousarray(image[..., ::-1])).float() - torch.tensor(BGR_MEAN)
    boxes, scores, landmarks = network(bgr.permute(2, 0, 1)[None].to(device))
    found = decode(boxes[0].float().cpu(), scores[0].float().cpu(), landmarks[0].float().cpu(),
                   anchors(image.shape[0], image.shape[1]), (image.shape[1], image.shape[0]))
    faces = [(box / scale, points / scale) for box, points in found]
    return [(box, points) for box, points in faces if np.linalg.norm(points[1] - points[0]) >= MIN_EYE_DISTANCE]
