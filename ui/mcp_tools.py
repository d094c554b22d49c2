"""Tools for AI assistants over MCP (Gradio's built-in MCP server, enabled with --mcp).

Each tool builds the same typed request as the UI and the REST API and runs it through the job queue. The tools
are not put on Gradio's queue: Gradio's MCP server then calls them directly with the MCP request (whose HTTP
Basic credentials the guard has checked) instead of calling its own HTTP API through a client that has no login,
which failed on a server with --gradio-auth. Our job queue orders the work either way.
"""
from __future__ import annotations

import base64
import binascii
from typing import Literal

import gradio as gr

from backend.core.requests import ExtrasRequest, Img2ImgRequest, RequestError, Txt2ImgRequest
from backend.jobs.queue import TooManyJobs
from backend.services import Services
from ui.job_runner import client_address

FaceRestorer = Literal["GFPGAN", "CodeFormer"]  # backend.core.requests.FACE_RESTORERS, as the tool schema's enum


def _run(services: Services, request_class, fields: dict, http: gr.Request | None) -> list[str]:
    try:
        request = services.build_request(request_class, fields)
        job = services.jobs.run_and_wait(request, client=client_address(http))
    except (RequestError, TooManyJobs) as error:
        raise gr.Error(str(error)) from None
    if job.status == "failed":
        raise gr.Error(job.error)
    return [image.path for image in job.result.images]


def _decode(data: str, field: str) -> bytes:
    try:
        return base64.b64decode(data.split(",", 1)[-1] if data.startswith("data:") else data, validate=True)
    except (binascii.Error, ValueError):
        raise gr.Error(f"{field}: not valid base64") from None


def _faces(restore_faces: bool, model: str) -> dict:
    """The face restoration fields as the UI and REST send them (the model only when faces are restored)."""
    return {"restore_faces": True, "face_restoration_model": model} if restore_faces else {}


def register_mcp_tools(services: Services):
    def txt2img(prompt: str, negative_prompt: str = "", steps: int = 20, cfg_scale: float = 7.0,
                width: int = 512, height: int = 512, seed: int = -1, sampler_name: str = "DPM++ 2M",
                restore_faces: bool = False, face_restoration_model: FaceRestorer = "GFPGAN",
                http: gr.Request = None) -> list[str]:
        """Generate images from a text prompt with the selected Stable Diffusion checkpoint.

        Args:
            prompt: what the image should show (A1111 prompt syntax).
            negative_prompt: what the image should not show.
            steps: sampling steps, 1 to 150.
            cfg_scale: how strongly to follow the prompt, 1 to 30.
            width: image width in pixels, a multiple of 8 from 64 to 2048.
            height: image height in pixels, a multiple of 8 from 64 to 2048.
            seed: random seed; -1 picks one.
            sampler_name: an A1111 sampler name such as "DPM++ 2M", "Euler a" or "DDIM".
            restore_faces: restore the faces in the images (A1111's Restore faces; needs a model in models/GFPGAN).
            face_restoration_model: the face restoration model, "GFPGAN" or "CodeFormer".

        Returns:
            Paths of the saved PNG images (their generation parameters are embedded).
        """
        return _run(services, Txt2ImgRequest, dict(prompt=prompt, negative_prompt=negative_prompt, steps=steps,
                                                   cfg_scale=cfg_scale, width=width, height=height, seed=seed,
                                                   sampler_name=sampler_name, **_faces(restore_faces,
                                                                                       face_restoration_model)), http)

    def img2img(image_base64: str, prompt: str, denoising_strength: float = 0.75, mask_base64: str = "",
                negative_prompt: str = "", steps: int = 20, cfg_scale: float = 7.0, width: int = 512,
                height: int = 512, seed: int = -1, restore_faces: bool = False,
                face_restoration_model: FaceRestorer = "GFPGAN", http: gr.Request = None) -> list[str]:
        """Repaint an image guided by a prompt; with a mask, repaint only the white area of the mask.

        Args:
            image_base64: the input image, PNG/JPEG/WEBP, base64-encoded (a data: URL also works).
            prompt: what the result should show.
            denoising_strength: 0 keeps the input, 1 ignores it.
            mask_base64: optional mask image, base64; white marks the area to repaint.
            negative_prompt: what the result should not show.
            steps: sampling steps, 1 to 150.
            cfg_scale: how strongly to follow the prompt, 1 to 30.
            width: output width in pixels, a multiple of 8.
            height: output height in pixels, a multiple of 8.
            seed: random seed; -1 picks one.
            restore_faces: restore the faces in the results (A1111's Restore faces; needs a model in models/GFPGAN).
            face_restoration_model: the face restoration model, "GFPGAN" or "CodeFormer".

        Returns:
            Paths of the saved PNG images.
        """
        return _run(services, Img2ImgRequest, dict(
            init_image=_decode(image_base64, "image_base64"),
            mask=_decode(mask_base64, "mask_base64") if mask_base64 else None, prompt=prompt,
            denoising_strength=denoising_strength, negative_prompt=negative_prompt, steps=steps, cfg_scale=cfg_scale,
            width=width, height=height, seed=seed, **_faces(restore_faces, face_restoration_model)), http)

    def upscale(image_base64: str, scale: float = 2.0, upscaler: str = "Lanczos", width: int = 0,
                height: int = 0, http: gr.Request = None) -> list[str]:
        """Upscale an image with a built-in resampler or an upscaler model (ESRGAN, Real-ESRGAN, SwinIR, ...).

        Args:
            image_base64: the input image, PNG/JPEG/WEBP, base64-encoded (a data: URL also works).
            scale: how many times larger, above 0 and at most 8; used when width and height are 0.
            upscaler: "Lanczos", "Nearest" or the name of an upscaler model file in models/ESRGAN (without extension).
            width: exact output width in pixels (with height; the image is scaled to cover it and cropped).
            height: exact output height in pixels (with width).

        Returns:
            Paths of the saved PNG images (the source's generation parameters are kept).
        """
        fields = dict(images=[_decode(image_base64, "image_base64")], upscaler_1=upscaler, upscaling_resize=scale)
        if width or height:
            fields.update(resize_mode=1, upscaling_resize_w=width, upscaling_resize_h=height, upscaling_crop=True)
        return _run(services, ExtrasRequest, fields, http)

    for tool in (txt2img, img2img, upscale):
        gr.api(tool, api_name=tool.__name__, queue=False)
