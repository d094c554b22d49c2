"""What a running Script menu script gets (`ScriptJob`): its request (without the script), its checked arguments,
and the app's one generation path and output folders. Built by Generator for each script job."""
from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from backend.core.infotext import quote
from backend.core.requests import GenerationResult, ImageResult, build_request
from backend.jobs.outputs import OutputStore, encode_png
from backend.jobs.queue import JobProgress


@dataclass(frozen=True)
class ScriptJob:
    request: Any  # Txt2ImgRequest | Img2ImgRequest, its script_name cleared
    args: list[Any]  # in A1111's positional order, checked against the script's ScriptArgs
    tab: str  # "txt2img" | "img2img"
    generate: Callable[[Any], GenerationResult]  # the app's generation (hooks, styles, saving) for one request
    outputs: OutputStore
    progress: JobProgress
    samplers: dict | None = None  # extension samplers, accepted by build
    upscaler: Callable[[Image.Image, str, tuple[int, int]], Image.Image] | None = None

    def build(self, request, changes: dict):
        """A validated copy of `request` with `changes` (RequestError naming the field when one is out of range)."""
        return build_request(type(request), {**request.model_dump(), **changes}, self.samplers)

    @staticmethod
    def fixed_seed() -> int:
        return secrets.randbelow(2**32)

    def upscale(self, image: Image.Image, name: str, size: tuple[int, int]) -> Image.Image:
        if self.upscaler is None:
            raise RuntimeError("this server was built without upscalers")
        return self.upscaler(image, name, size)

    def image_result(self, image: Image.Image, source: ImageResult, extra: dict[str, Any] | None = None,
                     save: bool = True) -> ImageResult:
        """A script's own image (SD upscale's combined tiles, a loopback's last image): `source`'s prompts and
        infotext with `extra` keys appended, saved in the tab's folder when the request saves images."""
        infotext = source.infotext + "".join(f", {key}: {quote(value)}" for key, value in (extra or {}).items())
        png = encode_png(image, infotext)
        path = self.outputs.save_png(png, self.tab, source.seed) if save and self.request.save_images else None
        return source.model_copy(update={"png": png, "path": path and str(path), "infotext": infotext})

    def grid_result(self, grid: Image.Image, source: ImageResult, basename: str) -> ImageResult:
        """A grid with `source`'s infotext, saved as <tab>-grids/<date>/<basename>-NNNNN.png when the request
        saves images."""
        png = encode_png(grid, source.infotext)
        path = self.outputs.save_grid_png(png, self.tab, basename) if self.request.save_images else None
        return source.model_copy(update={"png": png, "path": path and str(path)})
