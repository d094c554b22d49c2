"""Face restoration, as A1111's "Restore faces" and the Extras' GFPGAN visibility: every face found is aligned
to a 512x512 crop, restored by the face network, and pasted back through a feathered mask, so only the face
region of the image changes.

The model file is loaded on first use and kept (one at a time) for the next job; a file that changed on disk is
loaded again.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from backend.core.requests import FACE_RESTORERS, RequestError
from backend.models.construction import ModelConstruction
from backend.upscale.face_detection import FACE_SIZE, HaarFaceDetector, RetinaFaceDetector, alignment_matrix
from backend.upscale.face_models import (
    CODEFORMER_FOLDER,
    CODEFORMER_UNAVAILABLE,
    GFPGAN_FOLDER,
    face_model_files,
    load_face_model,
)
from backend.upscale.retinaface import RETINAFACE_FILE

log = logging.getLogger(__name__)
# What facexlib fills the crop with where it reaches past the image (a neutral grey the networks saw in training).
CROP_BORDER_VALUE = (135, 133, 132)
FEATHER_FRACTION = 1 / 20  # the pasted face's edge fades over this part of its size


@dataclass(frozen=True)
class FaceRestorerInfo:
    name: str  # "GFPGAN" | "CodeFormer"
    folder: Path  # where its model file goes


class FaceRestorers:
    """The face restoration service the generator, the Extras job and the API share."""

    def __init__(self, models_dir: Path, device: torch.device, construction: ModelConstruction | None = None):
        self.models_dir = Path(models_dir)
        self.device = device
        self.construction = construction or ModelConstruction()
        self._lock = threading.Lock()  # one restoration at a time: the cascades and the cache are not thread-safe
        self._detector: tuple[tuple | None, HaarFaceDetector | RetinaFaceDetector] | None = None  # (file, detector)
        self._loaded: tuple[tuple, object] | None = None  # ((path, size, mtime), descriptor)
        self.loads = 0  # model files actually loaded (tests check the cache with it)

    def folder(self, name: str) -> Path:
        return self.models_dir / (CODEFORMER_FOLDER if name == "CodeFormer" else GFPGAN_FOLDER)

    def available(self) -> list[FaceRestorerInfo]:
        """The restorers this version can run (A1111's /sdapi/v1/face-restorers), with their model folders."""
        return [FaceRestorerInfo("GFPGAN", self.folder("GFPGAN"))]

    def model_path(self, name: str, field: str) -> Path:
        """The model file `name` would use, or RequestError naming `field` and saying what to install where."""
        if name not in FACE_RESTORERS:
            raise RequestError(field, f"no face restorer named '{name}'; available: {', '.join(FACE_RESTORERS)}")
        if name == "CodeFormer":
            raise RequestError(field, CODEFORMER_UNAVAILABLE.format(folder=self.folder("GFPGAN")))
        files = face_model_files(self.folder(name))
        if not files:
            raise RequestError(field, f"no {name} model installed: put a {name} model file (e.g. GFPGANv1.4.pth) "
                                      f"in {self.folder(name)}")
        return files[0]

    def restore(self, image: Image.Image, name: str = "GFPGAN", visibility: float = 1.0, field: str = "restore_faces",
                check: Callable | None = None) -> Image.Image:
        """`image` with its faces restored, blended over the original by `visibility` (0 = the image unchanged).
        `check` is called between faces (interrupt, skip)."""
        if visibility <= 0:
            return image
        path = self.model_path(name, field)
        with self._lock:
            descriptor = self._model(path)
            detector = self.detector()
            rgb = np.asarray(image.convert("RGB"))
            faces = detector.detect(rgb)
            result = rgb.astype(np.float32)
            for face in faces:
                if check:
                    check()
                result = self._paste(result, self._restore_face(descriptor, rgb, face))
        log.info("restored %d face(s) with %s (found by %s)", len(faces), path.name, detector.name)
        restored = Image.fromarray(np.clip(np.rint(result), 0, 255).astype(np.uint8))
        return restored if visibility >= 1 else Image.blend(image.convert("RGB"), restored, visibility)

    def retinaface_file(self) -> Path | None:
        """facexlib's detector weights, where A1111 keeps them (models/GFPGAN/, or models/Codeformer/)."""
        for name in ("GFPGAN", "CodeFormer"):
            path = self.folder(name) / RETINAFACE_FILE
            if path.is_file():
                return path
        return None

    def detector(self) -> HaarFaceDetector | RetinaFaceDetector:
        """RetinaFace when its file is installed (loaded again when it changes), else OpenCV's cascade. Call it
        under the service's lock, as restore() does, or from a single thread."""
        path = self.retinaface_file()
        stat = path.stat() if path else None
        key = (str(path), stat.st_size, stat.st_mtime) if stat else None
        if self._detector is None or self._detector[0] != key:
            self._detector = None
            if path is None:
                self._detector = (None, HaarFaceDetector())
            else:
                log.info("loading the RetinaFace face detector %s", path)
                self._detector = (key, RetinaFaceDetector(path, self.device, self.construction))
        return self._detector[1]

    def clear(self):
        """Drop the loaded face network and detector (out of memory: the next use loads them again)."""
        with self._lock:
            self._loaded = None
            self._detector = None

    def _model(self, path: Path):
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime)
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = None  # the old model is dropped before the new one is built
            log.info("loading face restoration model %s", path.name)
            descriptor = load_face_model(path, self.construction)
            descriptor.to(self.device, torch.float32)  # the face networks overflow in float16
            self._loaded = (key, descriptor)
            self.loads += 1
        return self._loaded[1]

    def _restore_face(self, descriptor, rgb: np.ndarray, face) -> tuple[np.ndarray, np.ndarray]:
        """The restored face warped back onto the image's canvas, and its feathered mask (0..1)."""
        import cv2

        height, width = rgb.shape[:2]
        matrix = alignment_matrix(face)
        crop = cv2.warpAffine(rgb, matrix, (FACE_SIZE, FACE_SIZE), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=CROP_BORDER_VALUE)
        restored = self._run(descriptor, crop)
        inverse = cv2.invertAffineTransform(matrix)
        back = cv2.warpAffine(restored, inverse, (width, height), flags=cv2.INTER_LINEAR)
        mask = cv2.warpAffine(np.ones((FACE_SIZE, FACE_SIZE), np.float32), inverse, (width, height),
                              flags=cv2.INTER_LINEAR)
        face_side = FACE_SIZE * float(np.hypot(inverse[0, 0], inverse[1, 0]))  # the crop's side in the image
        edge = max(1, round(face_side * FEATHER_FRACTION))
        kernel = 2 * edge + 1
        mask = cv2.erode(mask, np.ones((kernel, kernel), np.uint8))  # the feather stays inside the crop
        mask = cv2.GaussianBlur(mask, (kernel, kernel), 0)
        return back.astype(np.float32), mask[..., None]

    @staticmethod
    def _paste(base: np.ndarray, face: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        restored, mask = face
        return base + mask * (restored - base)  # where the mask is 0, the pixels stay exactly as they were

    def _run(self, descriptor, crop: np.ndarray) -> np.ndarray:
        # The networks work in -1..1 and return (image, extras); spandrel's own call would clamp to 0..1.
        tensor = torch.from_numpy(crop).permute(2, 0, 1)[None].to(self.device, torch.float32) / 127.5 - 1
        with torch.inference_mode():
            output = descriptor.model(tensor)
        output = output[0] if isinstance(output, (tuple, list)) else output
        pixels = ((output[0].float().clamp(-1, 1) + 1) * 127.5).round().byte()
        return pixels.permute(1, 2, 0).cpu().numpy()
