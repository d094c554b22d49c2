"""A1111's request bodies -> our typed requests, and our results -> A1111's answers (`info`, base64 images):
the translation the /sdapi/v1 routes share. Bad input is a 422 naming the field."""
from __future__ import annotations

import base64
import binascii
import datetime
import html
import io
import logging
from typing import Any

from fastapi import HTTPException
from PIL import Image

from backend.core.image_input import ImageInputError, open_image
from backend.core.infotext import parse_infotext
from backend.core.options import Options
from backend.core.requests import (
    LATENT_UPSCALE_MODES,
    ExtrasRequest,
    ImageResult,
    Img2ImgRequest,
    RequestError,
    Txt2ImgRequest,
)
from backend.generation.scripts.always_on import always_on_fields
from backend.http.bodies import HIRES_SAME, ExtrasBaseBody, GenerationBody, Img2ImgBody, Txt2ImgBody
from backend.http.controlnet_units import controlnet_script_args, translate_units
from backend.jobs.outputs import encode_image
from backend.jobs.queue import Job
from backend.models.weight_files import CheckpointError, read_safetensors_metadata, sniff_format
from backend.services import Services
from backend.upscale.extras import check_request

log = logging.getLogger(__name__)
# reported in info.extra_generation_params, as A1111 (and Forge, for its flow-model keys)
EXTRA_GENERATION_KEYS = ("Lora hashes", "TI hashes", "Distilled CFG Scale", "Shift")


def lora_metadata(path) -> dict[str, Any]:
    """A LoRA's training metadata (kohya's ss_* keys), from the safetensors header only."""
    try:
        return read_safetensors_metadata(path) if sniff_format(path) == "safetensors" else {}
    except (CheckpointError, OSError, ValueError):
        return {}


def decode_image(data: str, field: str) -> Image.Image:
    """base64 (or a data: URL) -> a decoded, checked image (see backend.core.image_input); 422 naming the field."""
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(status_code=422, detail=f"{field}: not valid base64") from None
    try:
        return open_image(raw)
    except ImageInputError as error:
        raise HTTPException(status_code=422, detail=f"{field}: {error}") from None


def checkpoint_problem(error: CheckpointError) -> str:
    """The error without the "checkpoint: " a lookup failure starts with (the caller names its own field)."""
    return str(error).removeprefix("checkpoint: ")


def _common_fields(body: GenerationBody, services: Services) -> dict[str, Any]:
    """The request fields txt2img and img2img share, from an A1111 body."""
    overrides = dict(body.override_settings or {})
    checkpoint = overrides.pop("sd_model_checkpoint", None)
    vae = overrides.pop("sd_vae", "Automatic")
    clip_skip = overrides.pop("CLIP_stop_at_last_layers", 1)
    faces = {name: overrides.pop(name) for name in ("face_restoration_model", "code_former_weight")
             if name in overrides}
    option_fields = {name: overrides.pop(name) for name in ("eta_noise_seed_delta", "randn_source",
                                                            "hires_fix_refiner_pass") if name in overrides}
    # the other options apply to this job only (request.override_settings); keys that are not options are ignored
    try:
        services.networks.check_vae(str(vae))
    except RequestError as error:
        raise HTTPException(status_code=422, detail=f"override_settings.{error}") from None
    if checkpoint is not None and not isinstance(checkpoint, str):
        raise HTTPException(status_code=422, detail="override_settings.sd_model_checkpoint: must be a checkpoint "
                                                    f"title or name (a string); got {checkpoint!r}")
    if checkpoint is not None:
        try:
            checkpoint = services.models.resolve(checkpoint).title
        except CheckpointError as error:
            raise HTTPException(status_code=422,
                                detail=f"override_settings.sd_model_checkpoint: {checkpoint_problem(error)}") from None
    refiner = _checkpoint_title(body.refiner_checkpoint, "refiner_checkpoint", services)
    units, _ = controlnet_script_args(body.alwayson_scripts)
    return {
        "extension_args": _extension_args(body, services),
        "controlnet_units": translate_units(units or [], services),
        "prompt": body.prompt, "negative_prompt": body.negative_prompt or "",
        "sampler_name": body.sampler_name or body.sampler_index, "scheduler": body.scheduler or "Automatic",
        "steps": body.steps, "width": body.width, "height": body.height,
        "seed": body.seed, "batch_size": body.batch_size, "n_iter": body.n_iter, "checkpoint": checkpoint,
        "save_images": body.save_images, "sd_vae": str(vae), "clip_skip": clip_skip, "styles": body.styles or [],
        "script_name": body.script_name or None, "script_args": body.script_args, "override_settings": overrides,
        "restore_faces": bool(body.restore_faces), **faces,
        "subseed": body.subseed, "subseed_strength": body.subseed_strength,
        "seed_resize_from_w": body.seed_resize_from_w, "seed_resize_from_h": body.seed_resize_from_h,
        "tiling": bool(body.tiling), **option_fields, "refiner_checkpoint": refiner,
        **({"refiner_switch_at": body.refiner_switch_at} if body.refiner_switch_at is not None else {}),
        "distilled_cfg_scale": body.distilled_cfg_scale, "shift": body.shift,
        "skip_guidance_layers": body.skip_guidance_layers, "skip_layer_guidance_scale": body.skip_layer_guidance_scale,
        "skip_layer_guidance_start": body.skip_layer_guidance_start,
        "skip_layer_guidance_stop": body.skip_layer_guidance_stop,
        # left unset when the client sent none, so a Flux model can use its own default (1)
        **({"cfg_scale": body.cfg_scale} if "cfg_scale" in body.model_fields_set else {}),
        **_always_on_fields(body, services),
    }


def _checkpoint_title(name: str | None, field: str, services: Services) -> str | None:
    """A second checkpoint named in a body (refiner, hires): its title; None for A1111's "none" / "same" values."""
    if name in HIRES_SAME or name == "None":
        return None
    try:
        return services.models.resolve(name).title
    except CheckpointError as error:
        raise HTTPException(status_code=422, detail=f"{field}: {checkpoint_problem(error)}") from None


def _always_on_fields(body: GenerationBody, services: Services) -> dict[str, Any]:
    """A1111's built-in always-on scripts in `alwayson_scripts` ({"Seed": {"args": [...]}}): the fields their args
    set, which win over the body's, as their setup() runs after the body is read."""
    fields: dict[str, Any] = {}
    for script in services.generator.always_on_scripts():
        for name, value in body.alwayson_scripts.items():
            if str(name).lower() != script.name:
                continue
            values = value.get("args", []) if isinstance(value, dict) else value
            if not isinstance(values, list):
                raise HTTPException(status_code=422, detail=f"alwayson_scripts.{name}.args: must be a list")
            try:
                fields |= always_on_fields(script, values)
            except RequestError as error:
                raise HTTPException(status_code=422, detail=f"alwayson_scripts.{name}.{error}") from None
    if fields.get("refiner_checkpoint"):
        fields["refiner_checkpoint"] = _checkpoint_title(fields["refiner_checkpoint"], "alwayson_scripts.Refiner",
                                                         services)
    return fields


def _extension_args(body: GenerationBody, services: Services) -> dict[str, Any]:
    """`extension_args`, plus A1111's `alwayson_scripts` ({name: {"args": [...]}}) addressed to an extension by
    its name; a name no loaded extension has is refused, not ignored."""
    loaded = {record.name.lower(): record.name for record in services.extensions.records if record.loaded}
    built_in = {script.name for script in services.generator.always_on_scripts()}
    result: dict[str, Any] = {}
    _, always_on = controlnet_script_args(body.alwayson_scripts)  # ControlNet is built in (see controlnet_units)
    for source, values in (("extension_args", body.extension_args), ("alwayson_scripts", always_on)):
        for name, value in values.items():
            if source == "alwayson_scripts" and str(name).lower() in built_in:
                continue  # Sampler, Seed, Refiner: request fields (_always_on_fields)
            extension = loaded.get(str(name).lower())
            if extension is None:
                raise HTTPException(status_code=422, detail=f"{source}.{name}: no loaded extension of that name; "
                                                            f"loaded: {sorted(loaded.values()) or 'none'}")
            result[extension] = value if isinstance(value, dict) else {"args": value}
    return result


def _build(request_class, fields: dict[str, Any], services: Services):
    try:
        request = services.build_request(request_class, fields)
    except RequestError as error:
        raise HTTPException(status_code=422, detail=str(error)) from None
    if getattr(request, "restore_faces", False):  # a missing face model answers 422 before the job is queued
        _check(lambda: services.faces.model_path(request.face_restoration_model, "restore_faces"))
    return request


def txt2img_request(body: Txt2ImgBody, services: Services) -> Txt2ImgRequest:
    fields = _common_fields(body, services)
    if body.enable_hr:
        upscaler = body.hr_upscaler or "Latent"
        if upscaler not in LATENT_UPSCALE_MODES:
            _check(lambda: services.upscalers.resolve(upscaler, "hr_upscaler"))
        fields |= {"enable_hr": True, "hr_scale": body.hr_scale, "hr_resize_x": body.hr_resize_x,
                   "hr_resize_y": body.hr_resize_y, "hr_upscaler": upscaler,
                   "hr_second_pass_steps": body.hr_second_pass_steps, "denoising_strength": body.denoising_strength,
                   "hr_sampler_name": None if body.hr_sampler_name in HIRES_SAME else body.hr_sampler_name,
                   "hr_scheduler": None if body.hr_scheduler in HIRES_SAME else body.hr_scheduler,
                   "hr_prompt": body.hr_prompt, "hr_negative_prompt": body.hr_negative_prompt, "hr_cfg": body.hr_cfg,
                   "hr_checkpoint_name": _checkpoint_title(body.hr_checkpoint_name, "hr_checkpoint_name", services)}
    return _build(Txt2ImgRequest, fields, services)


def _check(action):
    """Run a check that raises RequestError; answer 422 naming the field."""
    try:
        return action()
    except RequestError as error:
        raise HTTPException(status_code=422, detail=str(error)) from None


def extras_request(body: ExtrasBaseBody, images: list[bytes], services: Services) -> ExtrasRequest:
    """An A1111 extras body -> our request, checked (names, sizes) before it is queued. Not saved, as A1111's
    API does not save extras results."""
    request = _build(ExtrasRequest, {
        "images": images, "resize_mode": body.resize_mode, "upscaling_resize": body.upscaling_resize,
        "upscaling_resize_w": body.upscaling_resize_w, "upscaling_resize_h": body.upscaling_resize_h,
        "upscaling_crop": body.upscaling_crop, "upscaler_1": body.upscaler_1, "upscaler_2": body.upscaler_2,
        "extras_upscaler_2_visibility": body.extras_upscaler_2_visibility, "gfpgan_visibility": body.gfpgan_visibility,
        "codeformer_visibility": body.codeformer_visibility, "codeformer_weight": body.codeformer_weight,
        "save_images": False,
    }, services)
    _check(lambda: check_request(request, services.upscalers, services.faces))
    return request


def plaintext_to_html(text: str) -> str:
    """A1111's html_info: the text's lines, escaped, in one paragraph."""
    return "<p>" + "<br>\n".join(html.escape(line) for line in text.split("\n")) + "</p>"


def image_bytes(data: str, field: str) -> bytes:
    """base64 (or a data: URL) -> the bytes of a readable image; 422 naming the field otherwise."""
    decode_image(data, field)
    return base64.b64decode(data.split(",", 1)[-1] if data.startswith("data:") else data)


def img2img_request(body: Img2ImgBody, services: Services) -> Img2ImgRequest:
    if not body.init_images:
        raise HTTPException(status_code=422, detail="init_images: give one base64 image")
    count = len(body.init_images)
    if count > body.batch_size:  # A1111: "bad number of images passed"
        raise HTTPException(status_code=422, detail=f"init_images: {count} images for batch_size {body.batch_size}; "
                                                    f"give {body.batch_size} or fewer, or raise batch_size")
    fields = _common_fields(body, services)
    if count > 1:  # as A1111: the batch is one image per init image, image i from init_images[i]
        fields["batch_size"] = count
    return _build(Img2ImgRequest, {
        **fields, "init_image": image_bytes(body.init_images[0], "init_images[0]"),
        "extra_init_images": [image_bytes(data, f"init_images[{index}]")
                              for index, data in enumerate(body.init_images[1:], start=1)],
        "mask": image_bytes(body.mask, "mask") if body.mask else None,
        "denoising_strength": body.denoising_strength, "resize_mode": body.resize_mode,
        # A1111: mask_blur, when given, sets both; else mask_blur_x and mask_blur_y blur each direction
        "mask_blur": body.mask_blur if body.mask_blur is not None else body.mask_blur_x,
        "mask_blur_y": None if body.mask_blur is not None or body.mask_blur_y == body.mask_blur_x else body.mask_blur_y,
        "inpainting_fill": body.inpainting_fill, "inpaint_full_res": body.inpaint_full_res,
        "inpaint_full_res_padding": body.inpaint_full_res_padding,
        "inpainting_mask_invert": body.inpainting_mask_invert,
    }, services)


def generation_info(job: Job, services: Services) -> dict[str, Any]:
    request, shown = job.request, job.result.shown_images
    images = [image for image in shown if not image.is_grid]  # A1111's all_* lists: the images, not their grids
    entry = services.models.resolve(request.checkpoint)
    parsed = parse_infotext(images[0].infotext) if images else {}
    return {
        # The prompts the images were made with (an extension such as wildcards may have resolved the request's).
        "prompt": images[0].prompt if images else request.prompt, "all_prompts": [image.prompt for image in images],
        "negative_prompt": images[0].negative_prompt if images else request.negative_prompt,
        "all_negative_prompts": [image.negative_prompt for image in images],
        "seed": images[0].seed if images else request.seed, "all_seeds": [image.seed for image in images],
        "subseed": images[0].subseed if images else request.subseed,
        "all_subseeds": [image.subseed for image in images], "subseed_strength": request.subseed_strength,
        "width": request.width, "height": request.height, "sampler_name": parsed.get("Sampler", request.sampler_name),
        "scheduler": parsed.get("Schedule type", request.scheduler),
        "cfg_scale": float(parsed.get("CFG scale", request.cfg_scale)),  # Flux's default is decided at run time
        "steps": request.steps, "batch_size": request.batch_size, "restore_faces": request.restore_faces,
        "sd_model_name": entry.model_name, "sd_model_hash": entry.short_hash, "sd_vae_name": parsed.get("VAE"),
        "sd_vae_hash": parsed.get("VAE hash"), "seed_resize_from_w": request.seed_resize_from_w,
        "seed_resize_from_h": request.seed_resize_from_h,
        "denoising_strength": request.denoising_strength if isinstance(request, Img2ImgRequest) or (
            getattr(request, "enable_hr", False)) else None,
        "extra_generation_params": {key: parsed[key] for key in EXTRA_GENERATION_KEYS if key in parsed},
        "index_of_first_image": len(shown) - len(images) if images else 0, "warnings": job.result.warnings,
        "infotexts": [image.infotext for image in shown], "styles": list(request.styles),
        "job_timestamp": datetime.datetime.fromtimestamp(job.created_at).strftime("%Y%m%d%H%M%S"),
        "clip_skip": int(parsed.get("Clip skip", 1)),
        "is_using_inpainting_conditioning": job.result.model_label.endswith("inpainting"), "task_id": job.id,
        "interrupted": job.status == "interrupted",
    }


def api_image_base64(image: ImageResult, options: Options) -> str:
    """An image as A1111's API encodes it (encode_pil_to_base64): in samples_format, the infotext (when
    enable_pnginfo) in a PNG `parameters` chunk or, for JPEG and WEBP, the EXIF UserComment; quality jpeg_quality.
    (webp_lossless is honoured too, unlike A1111's API: the client gets the pixels the saved file has.)"""
    extension = "jpg" if options.samples_format == "jpeg" else options.samples_format
    if extension == "png" and options.enable_pnginfo:
        data = image.png  # encoded once by the job, infotext included
    else:
        data = encode_image(Image.open(io.BytesIO(image.png)), extension,
                            image.infotext if options.enable_pnginfo else None, options.jpeg_quality,
                            options.webp_lossless)
    return base64.b64encode(data).decode()


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
