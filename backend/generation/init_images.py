"""Several init images in one img2img request (A1111's `init_images` list): image i of each batch starts from
init image i (cycling when the batch is larger than the list). Each image is its own img2img request with the
seed and variation seed the batch would give it; every image has its own noise generator, so the pixels are
those of one batched call."""
from __future__ import annotations

from collections.abc import Callable

from backend.core.requests import GenerationResult, Img2ImgRequest, build_request


def generate_per_init_image(request: Img2ImgRequest, generate: Callable[[Img2ImgRequest], GenerationResult],
                            samplers: dict | None = None) -> GenerationResult:
    sources = [request.init_image, *request.extra_init_images]
    varies = request.subseed_strength > 0
    images, warnings, result = [], [], None
    for batch in range(request.n_iter):
        for position in range(request.batch_size):
            index = batch * request.batch_size + position
            result = generate(build_request(Img2ImgRequest, {
                **request.model_dump(), "init_image": sources[position % len(sources)], "extra_init_images": [],
                "seed": request.seed if varies else request.seed + index, "subseed": request.subseed + index,
                "batch_size": 1, "n_iter": 1}, samplers))
            images += result.images
            warnings += [warning for warning in result.warnings if warning not in warnings]
            if result.interrupted:
                return result.model_copy(update={"images": images, "warnings": warnings})
    return result.model_copy(update={"images": images, "warnings": warnings})
