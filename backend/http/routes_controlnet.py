"""sd-webui-controlnet's REST routes under /controlnet (version, model_list, module_list, control_types, settings,
detect), with its answer shapes, so clients written for the extension work unchanged."""
from __future__ import annotations

import base64
import io

import numpy as np
from fastapi import APIRouter, Body, HTTPException
from PIL import Image

from backend.controlnet.annotator_files import WeightedPreprocessor
from backend.controlnet.control_types import control_type
from backend.controlnet.preprocessors import RESOLUTION
from backend.controlnet.weighted_runs import NETWORK_RUNS
from backend.core.errors import UserError
from backend.http.controlnet_units import decode_unit_image
from backend.services import Services

API_VERSION = 3  # the extension's external_code.get_api_version()
MAX_DETECT_IMAGES = 16


def sliders(preprocessor) -> list[dict]:
    if isinstance(preprocessor, WeightedPreprocessor):
        network_run = NETWORK_RUNS.get(preprocessor.name)
        extra = [network_run.slider_1, network_run.slider_2] if network_run else []
        return [slider.api_json() for slider in (RESOLUTION, *extra) if slider.visible]
    return [slider.api_json() for slider in (preprocessor.resolution, preprocessor.slider_1, preprocessor.slider_2)
            if slider.visible]


def png_base64(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def add_controlnet_routes(router: APIRouter, services: Services):
    controlnets = services.controlnets

    @router.get("/version")
    def version():
        return {"version": API_VERSION}

    @router.get("/model_list")
    def model_list(update: bool = True):
        return {"model_list": controlnets.model_titles(refresh=update)}

    @router.get("/module_list")
    def module_list(alias_names: bool = False):
        catalog = controlnets.preprocessors
        ordered = catalog.sorted()
        names = [p.public_name if alias_names else p.name for p in ordered]
        return {"module_list": names,
                "module_detail": {name: {"model_free": False, "sliders": sliders(p)} for name, p in zip(
                    names, ordered, strict=True)}}

    @router.get("/control_types")
    def control_types():
        catalog, models = controlnets.preprocessors, controlnets.model_titles()
        return {"control_types": {tag: control_type(tag, catalog, models) for tag in catalog.tags()}}

    @router.get("/settings")
    def settings():
        return {"control_net_unit_count": services.options.current.control_net_unit_count}

    @router.post("/detect")
    def detect(controlnet_module: str = Body("none"), controlnet_input_images: list[str] = Body([]),
               controlnet_images: list[str] = Body([], description="webuiapi's name for controlnet_input_images"),
               controlnet_processor_res: float = Body(-1), controlnet_threshold_a: float = Body(-1),
               controlnet_threshold_b: float = Body(-1), controlnet_masks: list[str] = Body([]),
               low_vram: bool = Body(False)):
        del low_vram  # the extension's CPU-offload switch; our preprocessors need no GPU
        try:
            preprocessor = controlnets.preprocessors.get(controlnet_module, "controlnet_module")
        except UserError as error:
            raise HTTPException(status_code=error.status, detail=str(error)) from None
        images = controlnet_input_images or controlnet_images
        if not images:
            raise HTTPException(status_code=422, detail="controlnet_input_images: No image selected")
        if len(images) > MAX_DETECT_IMAGES:
            raise HTTPException(status_code=422, detail=f"controlnet_input_images: at most {MAX_DETECT_IMAGES} "
                                                        "images per call")
        if preprocessor.accepts_mask and len(controlnet_masks) != len(images):
            raise HTTPException(status_code=422, detail=f"controlnet_masks: preprocessor {controlnet_module} "
                                                        "requires `controlnet_masks` param.")
        answers, poses = [], []
        for index, data in enumerate(images):
            png = decode_unit_image(data, f"controlnet_input_images[{index}]")
            if png is None:
                raise HTTPException(status_code=422, detail=f"controlnet_input_images[{index}]: No image selected")
            pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
            mask = None
            if preprocessor.accepts_mask:
                mask_png = decode_unit_image(controlnet_masks[index], f"controlnet_masks[{index}]")
                mask = np.asarray(Image.open(io.BytesIO(mask_png)).convert("L")) if mask_png else None
            detection = controlnets.detect(controlnet_module, pixels, controlnet_processor_res,
                                           controlnet_threshold_a, controlnet_threshold_b, mask=mask,
                                           field="controlnet_module")
            detected = detection.pixels
            if detection.poses is not None:  # openpose's: one JSON per image, for the pose editor and clients
                poses.append(detection.poses)
            if detected.shape[2] == 4:  # inpaint: the area to repaint shown half transparent, as the extension
                detected = detected.copy()
                detected[:, :, 3] = 255 - detected[:, :, 3] // 2
            answers.append(png_base64(detected))
        return {"info": "Success", **({"poses": poses} if poses else {}), "images": answers}
