"""Tools for AI assistants over MCP (Gradio's built-in MCP server, enabled with --mcp).

Each tool builds the same typed request as the UI and the REST API and runs it through the job queue.
img2img and upscaling tools come with those features.
"""
from __future__ import annotations

import gradio as gr

from backend.requests import RequestError, Txt2ImgRequest, build_request
from backend.services import Services


def register_mcp_tools(services: Services):
    def txt2img(prompt: str, negative_prompt: str = "", steps: int = 20, cfg_scale: float = 7.0,
                width: int = 512, height: int = 512, seed: int = -1, sampler_name: str = "DPM++ 2M") -> list[str]:
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

        Returns:
            Paths of the saved PNG images (their generation parameters are embedded).
        """
        try:
            request = build_request(Txt2ImgRequest, dict(
                prompt=prompt, negative_prompt=negative_prompt, steps=steps, cfg_scale=cfg_scale, width=width,
                height=height, seed=seed, sampler_name=sampler_name))
        except RequestError as error:
            raise gr.Error(str(error)) from None
        job = services.jobs.run_and_wait(request)
        if job.status == "failed":
            raise gr.Error(job.error)
        return [image.path for image in job.result.images]

    gr.api(txt2img, api_name="txt2img")
