"""Finding faces offline, and the transform that aligns each one to the 512x512 crop face networks expect.

With facexlib's RetinaFace weights in models/GFPGAN/ (A1111's detector), faces come with five landmarks, mapped
onto the FFHQ template GFPGAN was trained on by a least-squares similarity transform, as facexlib does. Without
that file, the detector is OpenCV's frontal-face Haar cascade, which ships inside opencv-python-headless
(cv2.data), so nothing is downloaded: each face's eyes are looked for with the bundled eye cascade (or placed where
the box puts them) and mapped onto the template's eyes (scale, rotation, shift).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from backend.models.construction import ModelConstruction

FACE_SIZE = 512
# Eyes, nose tip and mouth corners in the 512x512 FFHQ-aligned crop (facexlib's template for GFPGAN).
TEMPLATE_LANDMARKS = ((192.98138, 239.94708), (318.90277, 240.1936), (256.63416, 314.01935),
                      (201.26117, 371.41043), (313.08905, 371.15118))
TEMPLATE_EYES = TEMPLATE_LANDMARKS[:2]
# Where the frontal-face cascade's box puts the eyes, as fractions of the box (measured on real faces).
BOX_EYES = ((0.29, 0.37), (0.71, 0.37))
MIN_FACE_FRACTION = 1 / 16  # faces smaller than this part of the shorter side are ignored (too small to restore)
MIN_FACE_PIXELS = 24
MAX_FACES = 50  # the largest ones; each costs a run of the face network


@dataclass(frozen=True)
class Face:
    box: tuple[int, int, int, int]  # x, y, width, height in the image
    eyes: tuple[tuple[float, float], tuple[float, float]]  # left and right eye centre in the image
    landmarks: np.ndarray | None = None  # RetinaFace: 5x2 (eyes, nose, mouth corners); None from the cascade


class RetinaFaceDetector:
    """facexlib's RetinaFace from its weights file; built once per service, run under the caller's lock."""

    name = "RetinaFace"

    def __init__(self, path: Path, device: torch.device, construction: ModelConstruction):
        from backend.upscale.retinaface import load_retinaface

        self.device = device
        self.network = load_retinaface(path, construction).to(device)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        from backend.upscale.retinaface import detect

        faces = []
        for box, points in detect(self.network, rgb, self.device):
            x1, y1, x2, y2 = (float(v) for v in box)
            box_int = (round(x1), round(y1), max(1, round(x2 - x1)), max(1, round(y2 - y1)))
            faces.append(Face(box_int, (tuple(points[0]), tuple(points[1])), points.astype(np.float64)))
        return sorted(faces, key=lambda face: (face.box[1], face.box[0]))


class HaarFaceDetector:
    """OpenCV's bundled cascades; built once per service, used under the caller's lock (not thread-safe)."""

    name = "OpenCV Haar cascade"

    def __init__(self):
        import cv2

        self._cv2 = cv2
        self._faces = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
        self._eyes = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_eye.xml")
        if self._faces.empty() or self._eyes.empty():
            raise RuntimeError("OpenCV's bundled Haar cascades could not be read")

    def detect(self, rgb: np.ndarray) -> list[Face]:
        cv2 = self._cv2
        gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        smallest = max(MIN_FACE_PIXELS, int(min(gray.shape) * MIN_FACE_FRACTION))
        boxes = self._faces.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(smallest, smallest))
        largest = sorted(boxes, key=lambda box: -int(box[2]) * int(box[3]))[:MAX_FACES]
        faces = [Face(tuple(int(v) for v in box), self._eyes_in(gray, box)) for box in largest]
        return sorted(faces, key=lambda face: (face.box[1], face.box[0]))

    def _eyes_in(self, gray: np.ndarray, box) -> tuple[tuple[float, float], tuple[float, float]]:
        x, y, width, height = (int(v) for v in box)
        guessed = tuple((x + fx * width, y + fy * height) for fx, fy in BOX_EYES)
        upper = gray[y:y + height * 5 // 8, x:x + width]  # eyes sit in the upper part of the box
        found = self._eyes.detectMultiScale(upper, scaleFactor=1.1, minNeighbors=5,
                                            minSize=(max(4, width // 10),) * 2, maxSize=(width // 2,) * 2)
        left = [(x + ex + ew / 2, y + ey + eh / 2) for ex, ey, ew, eh in found if ex + ew / 2 < width / 2]
        right = [(x + ex + ew / 2, y + ey + eh / 2) for ex, ey, ew, eh in found if ex + ew / 2 >= width / 2]
        if len(left) != 1 or len(right) != 1:
            return guessed  # none, or ambiguous (eyebrows, nostrils): trust the box
        (lx, ly), (rx, ry) = left[0], right[0]
        if abs(ly - ry) > height / 5 or rx - lx < width / 4:
            return guessed  # implausible pair
        return (lx, ly), (rx, ry)


def alignment_matrix(face: Face) -> np.ndarray:
    """The 2x3 affine matrix taking the image onto the 512x512 aligned crop (landmarks, or eyes, onto the
    template's)."""
    if face.landmarks is not None:
        import cv2

        matrix, _ = cv2.estimateAffinePartial2D(face.landmarks.astype(np.float32),
                                                np.array(TEMPLATE_LANDMARKS, np.float32), method=cv2.LMEDS)
        if matrix is not None:
            return matrix.astype(np.float64)
    (lx, ly), (rx, ry) = face.eyes
    (tlx, tly), (trx, try_) = TEMPLATE_EYES
    image_angle = math.atan2(ry - ly, rx - lx)
    template_angle = math.atan2(try_ - tly, trx - tlx)
    scale = math.hypot(trx - tlx, try_ - tly) / max(math.hypot(rx - lx, ry - ly), 1e-6)
    rotation = template_angle - image_angle
    cos, sin = scale * math.cos(rotation), scale * math.sin(rotation)
    # template = [cos -sin; sin cos] @ image + shift, with the left eye landing on the template's left eye
    shift_x = tlx - (cos * lx - sin * ly)
    shift_y = tly - (sin * lx + cos * ly)
    return np.array([[cos, -sin, shift_x], [sin, cos, shift_y]], dtype=np.float64)
