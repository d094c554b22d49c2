"""img2img, inpainting and outpainting: turn an Img2ImgRequest into pipeline inputs and composite the
results, with A1111's meaning for every option."""
from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from backend.core.image_input import open_image
from backend.core.requests import Img2ImgRequest, RequestError
from backend.generation.flow_guidance import guidance_arguments, is_flow
from backend.generation.flow_inpaint import flow_inpaint
from backend.generation.image_ops import (
    MASK_MODES,
    MASKED_CONTENT,
    binary_mask,
    blur_mask,
    composite,
    fill_masked_area,
    mask_crop_region,
    outpaint_canvas,
    resize_image,
)
from backend.generation.noise import BatchNoise
from backend.generation.pipelines import seeded_generators
from backend.generation.refiner import refined
from backend.generation.step_counter import steps_run

log = logging.getLogger(__name__)
FILL, ORIGINAL, LATENT_NOISE, LATENT_NOTHING = range(4)


@dataclass
class Img2ImgPlan:
    request: Img2ImgRequest
    base: Image.Image  # the input at the output size (outpaint: on the larger canvas); composited back
    mask: Image.Image | None  # binary, white = repaint, at base size
    alpha: Image.Image | None  # blurred mask used for the final composite
    crop: tuple[int, int, int, int] | None  # "only masked" region of base

    @property
    def task(self) -> str:
        return "inpaint" if self.mask is not None else "img2img"

    @property
    def pass_steps(self) -> list[int]:
        """The user's steps the one pass runs: its steps times the denoising strength (none at strength 0)."""
        return [steps_run(self.request.steps, self.request.denoising_strength)]

    @classmethod
    def from_request(cls, request: Img2ImgRequest) -> Img2ImgPlan:
        image = open_image(request.init_image).convert("RGB")
        base = resize_image(image, request.width, request.height, request.resize_mode)
        mask = None
        if request.mask is not None:
            if request.outpaints:
                raise RequestError("mask", "outpainting makes its own mask; send either a mask or outpaint margins")
            raw_mask = open_image(request.mask)
            if raw_mask.size != image.size:
                log.info("mask is %dx%d but the image is %dx%d; resizing the mask to the image",
                         *raw_mask.size, *image.size)
                raw_mask = raw_mask.resize(image.size, Image.NEAREST)
            mask = binary_mask(resize_image(raw_mask, request.width, request.height, request.resize_mode),
                               invert=bool(request.inpainting_mask_invert))
            if mask.getbbox() is None:
                raise RequestError("mask", "the mask is empty: paint over the area to repaint "
                                           "(or use img2img without a mask)")
        if request.outpaints:
            base, mask = outpaint_canvas(base, request.outpaint_left, request.outpaint_right,
                                         request.outpaint_up, request.outpaint_down, request.mask_blur)
        alpha = None
        if mask is not None:
            alpha = blur_mask(mask, request.mask_blur, request.mask_blur_y)
        crop = None
        if mask is not None and request.inpaint_full_res and not request.outpaints:
            crop = mask_crop_region(alpha, request.inpaint_full_res_padding, request.width, request.height)
        if 0 < request.denoising_strength < 1 and steps_run(request.steps, request.denoising_strength) < 1:
            raise RequestError("denoising_strength", f"{request.denoising_strength} of {request.steps} steps runs no "
                                                     "step; raise the strength or the steps")
        return cls(request=request, base=base, mask=mask, alpha=alpha, crop=crop)

    def infotext_parameters(self) -> dict:
        request = self.request
        parameters = {"Denoising strength": request.denoising_strength}
        if request.resize_mode:
            parameters["Resize mode"] = ("Just resize", "Crop and resize", "Resize and fill")[request.resize_mode]
        if self.mask is not None:
            if request.mask_blur_y in (None, request.mask_blur):  # A1111 writes it only when x == y
                parameters["Mask blur"] = request.mask_blur
            if request.inpainting_mask_invert:
                parameters["Mask mode"] = MASK_MODES[1]
            if request.inpainting_fill != ORIGINAL:
                parameters["Masked content"] = MASKED_CONTENT[request.inpainting_fill]
            if self.crop is not None:
                parameters["Inpaint area"] = "Only masked"
                parameters["Masked area padding"] = request.inpaint_full_res_padding
        if request.outpaints:
            parameters["Outpaint"] = (f"left {request.outpaint_left}, right {request.outpaint_right}, "
                                      f"up {request.outpaint_up}, down {request.outpaint_down}")
        return parameters

    # --- denoising ---------------------------------------------------------------------------------
    def make_batch(self, pipeline, noise: BatchNoise, on_step, prompts, refiner=None,
                   restore: Callable[[Image.Image], Image.Image] | None = None) -> list[Image.Image]:
        """`restore`: face restoration, applied before the input is composited back (as A1111 does), so an
        inpainting job changes nothing outside its mask."""
        request = self.request
        work_image, work_mask = self.base, self.mask
        if self.crop is not None:
            size = (request.width, request.height)
            work_image = self.base.crop(self.crop).resize(size, Image.LANCZOS)
            work_mask = self.mask.crop(self.crop).resize(size, Image.NEAREST)
        if work_mask is not None and request.inpainting_fill == FILL:
            work_image = fill_masked_area(work_image, work_mask)
        if request.denoising_strength == 0:
            generated = [work_image.copy() for _ in noise.seeds]  # no denoising: the (prepared) input itself
        else:
            # flow schedulers noise the image themselves (scale_noise), from the seeds' generators
            with (nullcontext() if is_flow(pipeline) else
                  noise.replacing_pipeline_noise(pipeline, pipeline.vae_scale_factor)):
                generated = self._denoise(pipeline, work_image, work_mask, noise, on_step, prompts, refiner)
        return [self._finish(restore(image) if restore else image) for image in generated]

    def _denoise(self, pipeline, image: Image.Image, mask: Image.Image | None, noise: BatchNoise, on_step,
                 prompts, refiner=None) -> list[Image.Image]:
        request = self.request
        arguments = prompts.pipeline_arguments(request.steps, len(noise), on_step)
        with refined(refiner)(pipeline, arguments, request.steps, len(noise)) as arguments:
            return self._denoise_with(pipeline, image, mask, noise, arguments)

    def _denoise_with(self, pipeline, image: Image.Image, mask: Image.Image | None, noise: BatchNoise,
                      arguments: dict) -> list[Image.Image]:
        request = self.request
        seeds = noise.seeds
        common = dict(num_inference_steps=request.steps, **guidance_arguments(request, pipeline),
                      generator=noise.sampler_generators(pipeline._execution_device), output_type="pil",
                      strength=request.denoising_strength, **arguments)
        if mask is None:
            if is_flow(pipeline):  # they size to their default (1024) unless told; at strength 1 noise is all there is
                return pipeline(image=image, width=image.width, height=image.height, **common).images
            if request.denoising_strength == 1:
                # Full strength starts from pure noise, so the input image has no influence at all.
                latents = self._pure_noise(pipeline, image.size, seeds)
                return pipeline(image=latents, **common).images
            return pipeline(image=image, **common).images
        if is_flow(pipeline):
            latent_start = {LATENT_NOISE: "noise", LATENT_NOTHING: "nothing"}.get(request.inpainting_fill)
            return flow_inpaint(pipeline, image, mask, seeds, latent_start, common)
        latents = self._encode(pipeline, image)
        latent_mask = self._latent_mask(mask, latents)
        if request.inpainting_fill == LATENT_NOISE:
            noise = torch.cat([torch.randn(latents.shape[1:], generator=g)[None] for g in seeded_generators(seeds)])
            latents = latents * (1 - latent_mask) + noise.to(latents) * latent_mask
        elif request.inpainting_fill == LATENT_NOTHING:
            latents = latents * (1 - latent_mask)
        else:
            latents = latents.expand(len(seeds), -1, -1, -1)
        masked_pixels = Image.composite(Image.new("RGB", image.size, (127, 127, 127)), image, mask)
        if request.denoising_strength == 1 and noise.options.changes_initial_noise:
            # at full strength the inpaint pipeline starts from its noise as it is, not through add_noise
            common |= noise.first_pass_arguments(pipeline, image.width, image.height)
            common["latents"] = common["latents"].to(latents.dtype)
        return pipeline(image=latents, mask_image=mask, masked_image_latents=self._encode(pipeline, masked_pixels),
                        width=image.width, height=image.height, **common).images

    def _pure_noise(self, pipeline, size, seeds) -> torch.Tensor:
        """Stand-in image latents for strength 1: the pipeline fully noises them, so they carry nothing."""
        scale = pipeline.vae_scale_factor
        return torch.zeros(len(seeds), pipeline.vae.config.latent_channels, size[1] // scale, size[0] // scale,
                           dtype=pipeline.vae.dtype, device=pipeline.vae.device)

    @staticmethod
    def _encode(pipeline, image: Image.Image) -> torch.Tensor:
        pixels = pipeline.image_processor.preprocess(image).to(pipeline.vae.device, pipeline.vae.dtype)
        with torch.no_grad():
            latents = pipeline.vae.encode(pixels).latent_dist.mode()
        return latents * pipeline.vae.config.scaling_factor

    @staticmethod
    def _latent_mask(mask: Image.Image, latents: torch.Tensor) -> torch.Tensor:
        small = mask.resize((latents.shape[-1], latents.shape[-2]), Image.BILINEAR)
        values = torch.from_numpy(np.asarray(small, dtype=np.float32) / 255.0)
        return (values >= 0.5).to(latents)[None, None]

    def _finish(self, generated: Image.Image) -> Image.Image:
        """Paste an "only masked" crop back, then composite: outside the blurred mask the input returns."""
        if self.mask is None:
            return generated
        if self.crop is not None:
            left, top, right, bottom = self.crop
            pasted = self.base.copy()
            pasted.paste(generated.resize((right - left, bottom - top), Image.LANCZOS), (left, top))
            generated = pasted
        return composite(self.base, generated, self.alpha)
