"""Which upscalers exist: the built-in resamplers and every model file in A1111's upscaler folders.

Each file's architecture and scale are found by loading it once; the result (or the reason it cannot be
used) is cached on disk by path, size and mtime, so listing never reloads a file that did not change.
A file that fails is listed with its error; the others stay usable.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from backend.models.construction import ModelConstruction
from backend.models.file_facts import FileFactsCache
from backend.models.weight_files import CheckpointError
from backend.upscale.model_files import UPSCALER_EXTENSIONS, describe, load_upscaler

log = logging.getLogger(__name__)
UPSCALER_FOLDERS = ("ESRGAN", "RealESRGAN", "SwinIR", "DAT", "HAT")  # under the models folder, as in A1111
BUILTIN_UPSCALERS = ("None", "Lanczos", "Nearest")  # A1111's names
DETECTED_FIELDS = ("architecture", "scale", "error")


@dataclass(frozen=True)
class UpscalerEntry:
    name: str  # what the user picks: "Lanczos", or a model file's name without extension
    path: Path | None = None  # None for the built-in resamplers
    architecture: str | None = None
    scale: int | None = None
    error: str | None = None  # why this file cannot be used; None when it can

    @property
    def usable(self) -> bool:
        return self.error is None

    @property
    def is_model(self) -> bool:
        return self.path is not None


class UpscalerRegistry:
    def __init__(self, models_dir: Path, cache_file: Path, construction: ModelConstruction):
        self.models_dir = Path(models_dir)
        self.construction = construction
        self._detections = FileFactsCache(cache_file)
        self._lock = threading.Lock()
        self._entries: tuple[UpscalerEntry, ...] | None = None
        self.detections_run = 0  # files actually loaded to detect them (tests check the cache with it)

    @property
    def entries(self) -> tuple[UpscalerEntry, ...]:
        """Built-ins first, then model files by name; scanned on first use, not at import or startup."""
        with self._lock:
            if self._entries is None:
                self._entries = self._scan()
            return self._entries

    def refresh(self) -> tuple[UpscalerEntry, ...]:
        with self._lock:
            self._entries = self._scan()
            return self._entries

    def find(self, name: str) -> UpscalerEntry | None:
        return next((entry for entry in self.entries if entry.name == name), None)

    def usable_names(self) -> list[str]:
        return [entry.name for entry in self.entries if entry.usable]

    def model_files(self) -> list[Path]:
        files = []
        for folder in UPSCALER_FOLDERS:
            root = self.models_dir / folder
            if root.is_dir():
                files += sorted(path for path in root.rglob("*") if path.suffix.lower() in UPSCALER_EXTENSIONS
                                and path.is_file() and not path.name.startswith("."))
        return files

    def _scan(self) -> tuple[UpscalerEntry, ...]:
        entries = [UpscalerEntry(name=name) for name in BUILTIN_UPSCALERS]
        taken = set(BUILTIN_UPSCALERS)
        changed = False
        for path in self.model_files():
            name = _unique_name(path, self.models_dir, taken)
            taken.add(name)
            detected = self._detections.get(path)
            if detected is None:
                detected = self._detect(path)
                self._detections.put(path, detected, save=False)  # saved once, after the scan
                changed = True
            entries.append(UpscalerEntry(name=name, path=path, **{key: detected.get(key) for key in DETECTED_FIELDS}))
        if changed:
            try:
                self._detections.save()
            except OSError as error:  # a read-only cache folder costs time at the next start, nothing else
                log.warning("could not save the upscaler cache: %s", error)
        return tuple(entries)

    def _detect(self, path: Path) -> dict:
        self.detections_run += 1
        try:
            info = describe(load_upscaler(path, self.construction))
        except CheckpointError as error:
            log.warning("upscaler %s cannot be used: %s", path, error)
            return {"architecture": None, "scale": None, "error": str(error)}
        return {"architecture": info.architecture, "scale": info.scale, "error": None}


def _unique_name(path: Path, models_dir: Path, taken: set[str]) -> str:
    """The file name without extension, as A1111 lists ESRGAN models; the full file name, then the path
    under the models folder, when that name is already taken (e.g. x.pth next to x.safetensors)."""
    for candidate in (path.stem, path.name, path.relative_to(models_dir).as_posix()):
        if candidate not in taken:
            return candidate
    return str(path)
