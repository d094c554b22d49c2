"""Finding faces offline, and the transform that aligns each one to the 512x512 crop face networks expect.

The detector is OpenCV's frontal-face Haar cascade, which ships inside opencv-python-headless (cv2.data), so
nothing is downloaded. Each face's eyes are looked for with the bundled eye cascade; when they are not found
clearly, they are placed where the frontal-face box puts them. The eyes are then mapped onto the eye positions
of the FFHQ template that GFPGAN and CodeFormer were trained on (a similarity transform: scale, rotation,
shift), as facexlib's alignment does with its five landmarks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FACE_SIZE = 512
# Eye centres in the 512x512 FFHQ-aligned crop (facexlib's template, left and right eye).
TEMPLATE_EYES = ((192.98, 239.95), (318.90, 240.19))
# Where the frontal-face cascade's box puts the eyes, as fractions of the box (measured on real faces).
BOX_EYES = ((0.29, 0.37), (0.71, 0.37))
MIN_FACE_FRACTION = 1 / 16  # faces smaller than this part of the shorter side are ignored (too small to restore)
MIN_FACE_PIXELS = 24


@dataclass(frozen=True)
class Face:
    box: tuple[int, int, int, int]  # x, y, width, height in the image
    eyes: tuple[tuple[float, float], tuple[float, float]]  # left and right eye centre in the image


class HaarFaceDetector:
    """OpenCV's bundled cascades; built once per service, used under the caller's lock (not thread-safe)."""

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
        faces = [Face(tuple(int(v) for v in box), self._eyes_in(gray, box)) for box in boxes]
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
    """The 2x3 affine matrix taking the image onto the 512x512 aligned crop (eyes onto the template's eyes)."""
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
