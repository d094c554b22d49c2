"""A1111's hires fix for txt2img: a first pass at width x height, an upscale (of the latents, or of the
decoded image with an upscaler), then an img2img pass at the final size with the same seeds.

The second pass is the ordinary diffusers img2img pipeline (the one img2img jobs use): latents go in as
its `image` (it takes 4-channel tensors, 16-channel for Flux/SD3, as latents as they are), images are encoded by
it.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from backend.core.hires_sizes import HiresSizes, hires_sizes
from backend.core.requests import LATENT_UPSCALE_MODES, RequestError, Txt2ImgRequest
from backend.core.samplers import resolve_sampler
from backend.generation.flow_guidance import guidance_arguments, is_flow, is_flux
from backend.generation.noise import BatchNoise
from backend.generation.refiner import Refiner, refined
from backend.generation.step_counter import steps_run
from backend.upscale.service import Upscalers


@dataclass
class HiresPlan:
    request: Txt2ImgRequest
    sizes: HiresSizes
    upscalers: Upscalers | None
    first_sampler: tuple[str, str] = ("", "")  # (sampler, schedule) of the first pass
    second_sampler: tuple[str, str] = ("", "")  # of the second pass: the hires choices or the first pass's
    refiner_pass: str = "second pass"  # A1111's hires_fix_refiner_pass: where a refiner switches in

    @classmethod
    def from_request(cls, request: Txt2ImgRequest, upscalers: Upscalers | None,
                     extra_samplers: dict | None = None, refiner_pass: str = "second pass") -> HiresPlan:
        sizes = hires_sizes(request.width, request.height, request.hr_scale, request.hr_resize_x, request.hr_resize_y)
        if request.hr_upscaler not in LATENT_UPSCALE_MODES:
            if upscalers is None:
                raise RequestError("hr_upscaler", f"only latent modes are available here: "
                                                  f"{', '.join(LATENT_UPSCALE_MODES)}")
            upscalers.resolve(request.hr_upscaler, "hr_upscaler")  # fail before the first pass, not after
        return cls(request=request, sizes=sizes, upscalers=upscalers,
                   first_sampler=resolve_sampler(request.sampler_name, request.scheduler, extra_samplers),
                   second_sampler=request.hires_sampler(extra_samplers),
                   refiner_pass=request.hires_fix_refiner_pass or refiner_pass)

    @property
    def second_cfg(self) -> float:
        return self.request.hr_cfg if self.request.hr_cfg is not None else self.request.cfg_scale

    def second_prompts(self, prompts, count: int, networks=None):
        """The second pass's conditioning: the hires prompts where given (each defaults to the image's own),
        encoded by `networks` (the hires checkpoint's prompt context) when the pass runs on another model."""
        request = self.request
        if not (request.hr_prompt or request.hr_negative_prompt) and networks is None:
            return prompts
        job = networks or getattr(prompts, "job", prompts)  # a batch with per-image prompts holds the job's
        written = [(request.hr_prompt or prompt, request.hr_negative_prompt or negative)
                   for prompt, negative in getattr(prompts, "texts", None) or [job.written] * count]
        return job.for_images(written)

    @property
    def latent_mode(self) -> tuple[str, bool] | None:
        return LATENT_UPSCALE_MODES.get(self.request.hr_upscaler)

    @property
    def second_pass_steps(self) -> int:
        return self.request.hr_second_pass_steps or self.request.steps

    @property
    def pass_steps(self) -> list[int]:
        """The user's steps of the first and the second pass (which runs its steps times the strength)."""
        return [self.request.steps, steps_run(self.second_pass_steps, self.request.denoising_strength)]

    def infotext_parameters(self) -> dict:
        """A1111's keys, in A1111's order; "Size" stays the first pass's size, as A1111 writes it."""
        request = self.request
        parameters = {"Size": f"{request.width}x{request.height}", "Denoising strength": request.denoising_strength}
        if request.hr_resize_x or request.hr_resize_y:
            parameters["Hires resize"] = f"{request.hr_resize_x}x{request.hr_resize_y}"
        else:
            parameters["Hires upscale"] = request.hr_scale
        if request.hr_second_pass_steps:
            parameters["Hires steps"] = request.hr_second_pass_steps
        parameters["Hires upscaler"] = request.hr_upscaler
        if self.second_sampler[0] != self.first_sampler[0]:
            parameters["Hires sampler"] = self.second_sampler[0]
        if self.second_sampler[1] != self.first_sampler[1]:
            parameters["Hires schedule type"] = self.second_sampler[1]
        if request.hr_prompt and request.hr_prompt != request.prompt:
            parameters["Hires prompt"] = request.hr_prompt
        if request.hr_negative_prompt and request.hr_negative_prompt != request.negative_prompt:
            parameters["Hires negative prompt"] = request.hr_negative_prompt
        if self.second_cfg != request.cfg_scale:
            parameters["Hires CFG Scale"] = self.second_cfg
        if request.refiner_checkpoint and request.refiner_switch_at < 1 and self.refiner_pass != "second pass":
            parameters["Hires refiner"] = self.refiner_pass
        return parameters

    # --- the two passes ----------------------------------------------------------------------------
    def make_batch(self, pipeline_for, noise: BatchNoise, on_step, prompts, second=None) -> list[Image.Image]:
        """`second`: the job's SecondModels. Its refiner switches in during the pass(es) `refiner_pass` names;
        once it took over the first pass it stays for the whole second pass, as in A1111 (which keeps the refiner
        loaded). A hires checkpoint, when set, runs the second pass instead."""
        hires = second.hires if second is not None else None
        refiner = second.refiner if second is not None else None
        request = self.request
        first_pipeline = pipeline_for("txt2img")
        flow = is_flow(first_pipeline)
        if flow and self.latent_mode and is_flux(first_pipeline):
            self._check_flux_latent_size()
        switched: list[bool] = []
        first_refiner = refiner if self.refiner_pass in ("first pass", "both passes") else None
        arguments = prompts.pipeline_arguments(request.steps, len(noise), on_step)
        with refined(first_refiner)(first_pipeline, arguments, request.steps, len(noise),
                                    on_switch=lambda: switched.append(True)) as arguments:
            first = first_pipeline(
                num_inference_steps=request.steps, width=request.width, height=request.height,
                **guidance_arguments(request, first_pipeline),
                **({"generator": noise.sampler_generators(first_pipeline._execution_device)} if flow else
                   noise.first_pass_arguments(first_pipeline, request.width, request.height)),
                output_type="latent" if self.latent_mode else "pil", **arguments)
        # a hires checkpoint is loaded for the second pass even when it is the job's own (A1111 reloads it)
        second_model = hires or (refiner.leased if switched and not request.hr_checkpoint_name else None)
        second = pipeline_for("img2img", self.second_sampler, second_model)
        first_images = first.images
        if self.latent_mode and first_images.ndim == 3:  # Flux's packed tokens -> (batch, 16, h, w)
            first_images = first_pipeline._unpack_latents(first_images, request.height, request.width,
                                                          first_pipeline.vae_scale_factor)
        if first_pipeline.interrupt:  # interrupted in the first pass: its images are the result (as in A1111)
            return decode_latents(second, first_images) if self.latent_mode else first_images
        if self.latent_mode:
            # flow latents too: upscaled unpacked, as they are (shifted and scaled); the flow img2img pipelines take
            # a 16-channel image as latents and pack them again
            upscaled = self._upscale_latents(first_images, second.vae_scale_factor)
            if request.denoising_strength == 0:
                return decode_latents(second, upscaled)
        else:
            upscaled = [self._upscale_image(image) for image in first_images]
            if request.denoising_strength == 0:
                return upscaled
        on_refiner = refiner is not None and second_model is not None and second_model.entry.title == \
            refiner.entry.title
        second_refiner = refiner if self.refiner_pass != "first pass" and not on_refiner else None
        final_size = dict(zip(("width", "height"), self.sizes.final)) if flow else {}  # they default to 1024
        arguments = self.second_prompts(prompts, len(noise), second_model and second_model.prompts).pipeline_arguments(
            request.steps, len(noise), on_step, hires_steps=self.second_pass_steps)
        # the second pass's noise comes from the same seeds (and variation), at the final size, as in A1111
        with (nullcontext() if flow else noise.replacing_pipeline_noise(second, second.vae_scale_factor),
              refined(second_refiner)(second, arguments, request.steps, len(noise),
                                      self._refiner_conditioning(second_refiner)) as arguments):
            return second(image=upscaled, strength=request.denoising_strength,
                          num_inference_steps=self.second_pass_steps,
                          **guidance_arguments(request, second, None if self.second_cfg == request.cfg_scale
                                               else self.second_cfg), **final_size,
                          generator=noise.sampler_generators(second._execution_device), output_type="pil",
                          **arguments).images

    def _refiner_conditioning(self, refiner: Refiner | None):
        """The refiner's encoding of the second pass's prompts (the hires prompts where given)."""
        if refiner is None:
            return None
        request, networks = self.request, refiner.prompts
        if not (request.hr_prompt or request.hr_negative_prompt):
            return networks.conditioning(request.steps, self.second_pass_steps)
        prompt, negative = networks.written
        texts = (request.hr_prompt or prompt, request.hr_negative_prompt or negative)
        return networks.image_conditioning(*networks.clean(*texts), request.steps, self.second_pass_steps)

    def _check_flux_latent_size(self):
        """Flux packs 2x2 latent pixels into a token: latents upscaled to the final size must split into them."""
        width, height = self.sizes.final
        if width % 16 or height % 16:
            raise RequestError("hr_scale", f"the latent hires fix on Flux needs a final size in multiples of 16; "
                                           f"got {width}x{height}: change the scale or the size, or use an image "
                                           "upscaler such as Lanczos")

    def _upscale_latents(self, latents: torch.Tensor, vae_scale: int) -> torch.Tensor:
        mode, antialias = self.latent_mode
        upscaled_width, upscaled_height = self.sizes.upscaled
        size = (-(-upscaled_height // vae_scale), -(-upscaled_width // vae_scale))  # ceil: crop, never pad
        # float32: some interpolation modes have no half-precision kernel
        resized = F.interpolate(latents.float(), size=size, mode=mode, antialias=antialias).to(latents.dtype)
        final_width, final_height = (side // vae_scale for side in self.sizes.final)
        top, left = (size[0] - final_height) // 2, (size[1] - final_width) // 2
        return resized[..., top:top + final_height, left:left + final_width]

    def _upscale_image(self, image: Image.Image) -> Image.Image:
        upscaled = self.upscalers.upscale(image, self.request.hr_upscaler, self.sizes.upscaled, "hr_upscaler")
        if upscaled.size == self.sizes.final:
            return upscaled
        final_width, final_height = self.sizes.final
        left, top = (upscaled.width - final_width) // 2, (upscaled.height - final_height) // 2
        return upscaled.crop((left, top, left + final_width, top + final_height))


def decode_latents(pipeline, latents: torch.Tensor) -> list[Image.Image]:
    """Latents -> images with the pipeline's VAE (float32 for a VAE that overflows in fp16, as diffusers'
    SDXL pipeline does). Flow models' VAEs also shift their latents (Flux, SD3: `shift_factor`)."""
    vae = pipeline.vae
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    dtype = vae.dtype
    try:
        if upcast:
            vae.to(torch.float32)
        with torch.no_grad():
            shift = getattr(vae.config, "shift_factor", None) or 0.0
            pixels = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor + shift).sample
    finally:
        if upcast:
            vae.to(dtype)
    return pipeline.image_processor.postprocess(pixels.float(), output_type="pil")
