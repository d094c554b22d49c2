"""/sdapi/v1 txt2img, img2img and png-info."""
from __future__ import annotations

import base64
import json

from fastapi import APIRouter, Request

from backend.core.image_metadata import read_infotext
from backend.core.infotext import parse_infotext
from backend.http.a1111 import api_image_base64, decode_image, generation_info, img2img_request, txt2img_request
from backend.http.bodies import (
    GenerationBody,
    GenerationResponse,
    Img2ImgBody,
    PngInfoBody,
    PngInfoResponse,
    Txt2ImgBody,
)
from backend.http.jobs import finished_job_or_error, submit_job
from backend.prompts.styles import extract_styles
from backend.services import Services


def add_generation_routes(api: APIRouter, services: Services):
    def run(request, body: GenerationBody, http: Request) -> GenerationResponse:
        try:
            job = finished_job_or_error(submit_job(services, request, http, body.force_task_id))
        finally:
            if request.override_settings and not body.override_settings_restore_afterwards:
                services.set_options(request.override_settings)  # A1111: the overrides stay set after the job
        options = services.generator.job_options(request)
        images = [api_image_base64(image, options) for image in job.result.shown_images] if body.send_images else []
        if body.send_images:  # ControlNet's detected maps follow the images, as sd-webui-controlnet appends them
            images += [base64.b64encode(png).decode() for png in job.result.detected_maps]
        parameters = body.model_dump()
        if isinstance(body, Img2ImgBody) and not body.include_init_images:
            parameters["init_images"], parameters["mask"] = None, None  # as A1111: not echoed unless asked
        return GenerationResponse(images=images, parameters=parameters,
                                  info=json.dumps(generation_info(job, services)))

    @api.post("/txt2img", response_model=GenerationResponse)
    def txt2img(body: Txt2ImgBody, http: Request):
        return run(txt2img_request(body, services), body, http)

    @api.post("/img2img", response_model=GenerationResponse)
    def img2img(body: Img2ImgBody, http: Request):
        return run(img2img_request(body, services), body, http)

    @api.post("/png-info", response_model=PngInfoResponse)
    def png_info(body: PngInfoBody):
        image = decode_image(body.image, "image")
        info = read_infotext(image) or ""
        items = {key: value for key, value in image.info.items() if isinstance(value, str)}
        items.pop("parameters", None)
        return PngInfoResponse(info=info, items=items, parameters=with_styles(parse_infotext(info) if info else {}))

    def with_styles(parameters: dict) -> dict:
        """A1111 (its default "Apply if any"): styles found at the prompts' ends come out of them, named in
        "Styles array"."""
        if not parameters:
            return parameters
        found, prompt, negative_prompt = extract_styles(parameters.get("Prompt", ""),
                                                        parameters.get("Negative prompt", ""), services.styles.all())
        if not found:
            return parameters
        return {**parameters, "Prompt": prompt, "Negative prompt": negative_prompt, "Styles array": found}
