"""What a running Script menu script gets (`ScriptJob`): its request (without the script), its checked arguments,
and the app's one generation path and output folders. Built by Generator for each script job."""
from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from backend.core.infotext import quote
from backend.core.options import Options
from backend.core.requests import GenerationResult, ImageResult, build_request
from backend.jobs.file_names import ImageFacts
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
    options: Options = field(default_factory=Options)  # the job's user options (grids, saving)

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
        infotext with `extra` keys appended, saved in the tab's folder (the job's format) when the request saves
        images and samples_save is on."""
        infotext = source.infotext + "".join(f", {key}: {quote(value)}" for key, value in (extra or {}).items())
        png = encode_png(image, infotext)
        saved = save and self.request.save_images and self.options.samples_save
        facts = ImageFacts(seed=source.seed, prompt=source.prompt, negative_prompt=source.negative_prompt,
                           width=image.width, height=image.height)
        path = self.outputs.save_image(image, self.tab, infotext, facts, options=self.options) if saved else None
        return source.model_copy(update={"png": png, "path": path and str(path), "infotext": infotext})

    def grid_result(self, grid: Image.Image, source: ImageResult, basename: str) -> ImageResult:
        """A grid with `source`'s infotext, saved as <grid folder>/<basename>-NNNNN.<grid_format> when the request
        saves images and grid_save is on."""
        png = encode_png(grid, source.infotext)
        saved = self.request.save_images and self.options.grid_save
        path = self.outputs.save_grid(grid, self.tab, source.infotext, basename, self.options) if saved else None
        return source.model_copy(update={"png": png, "path": path and str(path), "is_grid": True})
