"""/sdapi/v1 extra-single-image and extra-batch-images (A1111's Extras)."""
from __future__ import annotations

import base64

from fastapi import APIRouter, HTTPException, Request

from backend.core.requests import (
    ExtrasRequest,
)
from backend.http.a1111 import extras_request, image_bytes, plaintext_to_html
from backend.http.bodies import (
    ExtrasBatchImagesBody,
    ExtrasBatchImagesResponse,
    ExtrasSingleImageBody,
    ExtrasSingleImageResponse,
)
from backend.http.jobs import finished_job_or_error, submit_job
from backend.services import Services


def add_upscaling_routes(api: APIRouter, services: Services):
    def run_extras(request: ExtrasRequest, http: Request) -> list:
        job = finished_job_or_error(submit_job(services, request, http))
        return job.result.images

    @api.post("/extra-single-image", response_model=ExtrasSingleImageResponse)
    def extra_single_image(body: ExtrasSingleImageBody, http: Request):
        if not body.image:
            raise HTTPException(status_code=422, detail="image: give one base64 image")
        images = run_extras(extras_request(body, [image_bytes(body.image, "image")], services), http)
        return ExtrasSingleImageResponse(
            html_info=plaintext_to_html(images[0].postprocessing) if images else "",
            image=base64.b64encode(images[0].png).decode() if images and body.show_extras_results else None)

    @api.post("/extra-batch-images", response_model=ExtrasBatchImagesResponse)
    def extra_batch_images(body: ExtrasBatchImagesBody, http: Request):
        if not body.imageList:
            raise HTTPException(status_code=422, detail="imageList: give at least one image")
        data = [image_bytes(item.data, f"imageList[{number}].data") for number, item in enumerate(body.imageList)]
        images = run_extras(extras_request(body, data, services), http)
        return ExtrasBatchImagesResponse(
            html_info=plaintext_to_html(images[-1].postprocessing) if images else "",
            images=[base64.b64encode(image.png).decode() for image in images] if body.show_extras_results else [])
