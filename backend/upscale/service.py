"""Upscaling an image to an exact size with a named upscaler: a PIL resampler or a model file.

A model is run (tiled) as often as needed to reach the target, at most MAX_MODEL_RUNS times, then the
result is resized with Lanczos to the exact size, as A1111 does. Loaded models are kept in a small LRU
cache on the services' device, so the same model is never loaded twice in a row.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image

from backend.core.requests import RequestError
from backend.core.settings import Settings
from backend.models.construction import ModelConstruction
from backend.models.devices import free_accelerator_memory
from backend.upscale.model_files import UpscalerError, load_upscaler, model_dtype
from backend.upscale.registry import UpscalerEntry, UpscalerRegistry
from backend.upscale.tiling import MIN_TILE, image_to_tensor, run_with_oom_retry, tensor_to_image

log = logging.getLogger(__name__)
MAX_MODEL_RUNS = 3  # a 2x model reaches 8x in three runs; A1111 stops there too
RESAMPLERS = {"None": Image.LANCZOS, "Lanczos": Image.LANCZOS, "Nearest": Image.NEAREST}  # A1111: None = plain resize


@dataclass
class UpscalerCacheStats:
    loads: int = 0
    hits: int = 0
    evictions: int = 0


class UpscalerModelCache:
    """The last `limit` loaded upscaler models, on `device`, keyed by file path, size and mtime."""

    def __init__(self, limit: int, device: torch.device, dtype: torch.dtype, construction: ModelConstruction):
        self.limit = max(1, limit)
        self.construction = construction
        self.device = device
        self.dtype = dtype
        self.stats = UpscalerCacheStats()
        self._models: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, entry: UpscalerEntry):
        try:
            stat = entry.path.stat()
        except OSError:
            raise UpscalerError(f"{entry.path.name} is no longer there; refresh the upscaler list") from None
        key = (str(entry.path.resolve()), stat.st_size, stat.st_mtime)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                self.stats.hits += 1
                return self._models[key]
            descriptor = self._load(entry)
            self._models[key] = descriptor
            while len(self._models) > self.limit:
                self._models.popitem(last=False)
                self.stats.evictions += 1
            return descriptor

    def _load(self, entry: UpscalerEntry):
        log.info("loading upscaler %s", entry.name)
        descriptor = load_upscaler(entry.path, self.construction)
        dtype = model_dtype(descriptor, self.dtype)
        try:
            descriptor.to(self.device, dtype)
        except torch.OutOfMemoryError:
            log.warning("out of memory loading upscaler %s; dropping the cached upscalers and retrying", entry.name)
            self.clear()
            descriptor.to(self.device, dtype)
        self.stats.loads += 1
        return descriptor

    def clear(self):
        self._models.clear()
        free_accelerator_memory()


class Upscalers:
    """The upscaler service the generator, the API and the UI share."""

    def __init__(self, settings: Settings, device: torch.device, dtype: torch.dtype,
                 construction: ModelConstruction | None = None):
        """`construction`: the app's lock for building modules (built alone, in a test, it has its own)."""
        _check_settings(settings)
        self.settings = settings
        construction = construction or ModelConstruction()
        self.registry = UpscalerRegistry(settings.models_dir, settings.upscalers_cache_file, construction)
        self.models = UpscalerModelCache(settings.max_upscalers_in_memory, device, dtype, construction)
        self.device = device
        self.from_extensions: dict = {}  # name -> Registered(extension, upscale(image, size)), set by the services

    # --- which upscalers --------------------------------------------------------------------------
    @property
    def entries(self) -> tuple[UpscalerEntry, ...]:
        """Every upscaler, including files that cannot be used (their `error` says why)."""
        return self.registry.entries

    def names(self) -> list[str]:
        """The upscalers a user can pick, built-ins first, extensions' last."""
        names = self.registry.usable_names()
        return names + [name for name in self.from_extensions if name not in names]

    def refresh(self) -> tuple[UpscalerEntry, ...]:
        return self.registry.refresh()

    def resolve(self, name: str, field: str) -> UpscalerEntry:
        """The entry called `name`, or RequestError naming `field` and the choices."""
        entry = self.registry.find(name)
        if entry is None and name in self.from_extensions:
            return UpscalerEntry(name=name, architecture=f"extension {self.from_extensions[name].extension}")
        if entry is None:
            raise RequestError(field, f"no upscaler named '{name}'; available: {', '.join(self.names())}")
        if not entry.usable:
            raise RequestError(field, f"upscaler '{name}' cannot be used: {entry.error}")
        return entry

    # --- upscaling ---------------------------------------------------------------------------------
    def upscale(self, image: Image.Image, name: str, size: tuple[int, int], field: str = "upscaler",
                check: Callable | None = None) -> Image.Image:
        """`image` resized to exactly `size` (width, height) with the upscaler called `name`."""
        entry = self.resolve(name, field)
        image = image.convert("RGB")
        if entry.name in self.from_extensions and self.registry.find(name) is None:
            return self._run_extension(entry.name, image, size)
        if not entry.is_model:
            return image.resize(size, RESAMPLERS[entry.name])
        descriptor = self.models.get(entry)
        for run in range(MAX_MODEL_RUNS):
            big_enough = image.width >= size[0] and image.height >= size[1]
            # A downscale never needs the model; a same-size target runs it once (restoration models).
            if big_enough and (run > 0 or image.size != size):
                break
            before = image.size
            image = self._run_model(descriptor, image, check)
            if image.size == before:
                break  # a 1x model: running it again cannot reach a larger size
        return image if image.size == size else image.resize(size, Image.LANCZOS)

    def _run_extension(self, name: str, image: Image.Image, size: tuple[int, int]) -> Image.Image:
        registered = self.from_extensions[name]
        result = registered.value(image, size)
        if not isinstance(result, Image.Image):
            raise UpscalerError(f"upscaler {name} (extension {registered.extension}) returned "
                                f"{type(result).__name__}, not an image")
        return result.convert("RGB") if result.size == size else result.convert("RGB").resize(size, Image.LANCZOS)

    def _run_model(self, descriptor, image: Image.Image, check: Callable | None) -> Image.Image:
        from spandrel import ModelTiling

        tile = self.settings.upscale_tile_size
        if descriptor.tiling == ModelTiling.INTERNAL:
            tile = 0  # the network tiles (or needs the whole image) itself
        tensor = image_to_tensor(image, descriptor.device, descriptor.dtype)
        output = run_with_oom_retry(descriptor, tensor, tile, self.settings.upscale_tile_overlap, check)
        return tensor_to_image(output)


def _check_settings(settings: Settings):
    tile, overlap = settings.upscale_tile_size, settings.upscale_tile_overlap
    if settings.max_upscale_size < 1:
        raise ValueError(f"max upscale size: must be at least 1 pixel; got {settings.max_upscale_size}")
    if tile != 0 and tile < MIN_TILE:
        raise ValueError(f"upscale tile size: must be 0 (no tiling) or at least {MIN_TILE}; got {tile}")
    if overlap < 0 or (tile and overlap > tile // 4):
        raise ValueError(f"upscale tile overlap: must be between 0 and a quarter of the tile size "
                         f"({tile // 4 if tile else 'any'}); got {overlap}")
