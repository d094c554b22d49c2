"""Inpainting and outpainting with the flow-matching models.

Flux and SD3 checkpoints inpaint as diffusers' FluxInpaintPipeline / StableDiffusion3InpaintPipeline do: at every
step the input's latents, noised to that step, replace the result outside the mask. A Flux Fill checkpoint reads
the masked image and the mask as extra input channels instead (FluxFillPipeline). A1111's "latent noise" and
"latent nothing" change the latents the job starts from inside the mask; "fill" and "original" act on the pixels
before this (backend.generation.img2img).
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image

from backend.generation.pipelines import seeded_generators

LATENT_STARTS = ("noise", "nothing")  # A1111's "latent noise", "latent nothing"


def is_fill(pipeline) -> bool:
    return type(pipeline).__name__ == "FluxFillPipeline"


def flow_inpaint(pipeline, image: Image.Image, mask: Image.Image, seeds: list[int], latent_start: str | None,
                 common: dict) -> list[Image.Image]:
    """The batch's images (the pipeline's, before compositing). `mask`: binary, white = repaint; `latent_start`:
    one of LATENT_STARTS or None (start from the image's latents); `common`: the call's other keywords."""
    size = {"width": image.width, "height": image.height}
    if is_fill(pipeline):  # no negative pass (its CFG scale is 1; flow_guidance refuses more)
        common = {key: value for key, value in common.items() if not key.startswith("negative_")}
    if latent_start is None:
        return pipeline(image=image, mask_image=mask, **size, **common).images
    latents = encode_latents(pipeline, image)
    inside = latent_mask(mask, latents)
    if latent_start == "noise":
        noise = torch.cat([torch.randn(latents.shape[1:], generator=g)[None] for g in seeded_generators(seeds)])
        latents = latents * (1 - inside) + noise.to(latents) * inside
    else:
        latents = (latents * (1 - inside)).expand(len(seeds), -1, -1, -1)
    if is_fill(pipeline):  # it builds its masked-image input from the pixels; only its start changes
        with starting_from(pipeline, latents):
            return pipeline(image=image, mask_image=mask, **size, **common).images
    # a 16-channel `image` is taken as latents as they are (already shifted and scaled); the masked-image latents
    # are read only by 33-channel SD3 inpainting transformers, given so the pipeline does not mask latents itself
    return pipeline(image=latents, mask_image=mask, masked_image_latents=torch.zeros_like(latents), **size,
                    **common).images


@contextmanager
def starting_from(pipeline, latents: torch.Tensor):
    """FluxFillPipeline noising `latents` (shifted and scaled) instead of its image's encoding, for this call.
    The per-job pipeline is patched, never the cached model."""
    prepare = pipeline.prepare_latents
    pipeline.prepare_latents = lambda image, *arguments, **keywords: prepare(latents, *arguments, **keywords)
    try:
        yield
    finally:
        del pipeline.prepare_latents


def encode_latents(pipeline, image: Image.Image) -> torch.Tensor:
    """The image's latents as the flow pipelines hold them: the VAE's mean, shifted and scaled."""
    vae = pipeline.vae
    pixels = pipeline.image_processor.preprocess(image).to(vae.device, vae.dtype)
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mode()
    return (latents - vae.config.shift_factor) * vae.config.scaling_factor


def latent_mask(mask: Image.Image, latents: torch.Tensor) -> torch.Tensor:
    small = mask.convert("L").resize((latents.shape[-1], latents.shape[-2]), Image.BILINEAR)
    values = torch.from_numpy(np.asarray(small, dtype=np.float32) / 255.0)
    return (values >= 0.5).to(latents)[None, None]
