"""A1111's REST API under /sdapi/v1, served from the same job queue as the web UI."""
from __future__ import annotations

import base64
import binascii
import csv
import datetime
import html
import io
import json
import logging
import math
from typing import Any

import psutil
import torch
from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from PIL import Image

from backend.core.image_input import ImageInputError, open_image
from backend.core.image_metadata import read_infotext
from backend.core.infotext import parse_infotext
from backend.core.requests import (
    LATENT_UPSCALE_MODES,
    ExtrasRequest,
    Img2ImgRequest,
    RequestError,
    Txt2ImgRequest,
    build_request,
)
from backend.core.samplers import SCHEDULE_NAMES, sampler_table, schedule_api_name
from backend.http.bodies import (
    HIRES_SAME,
    ApiError,
    CheckpointItem,
    EmbeddingItem,
    EmbeddingsResponse,
    ExtrasBaseBody,
    ExtrasBatchImagesBody,
    ExtrasBatchImagesResponse,
    ExtrasSingleImageBody,
    ExtrasSingleImageResponse,
    GenerationBody,
    GenerationResponse,
    Img2ImgBody,
    LatentUpscaleModeItem,
    LoraItem,
    PngInfoBody,
    PngInfoResponse,
    ProgressResponse,
    PromptStyleItem,
    SamplerItem,
    SchedulerItem,
    Txt2ImgBody,
    UpscalerItem,
    VaeItem,
)
from backend.http.security import credentials_match
from backend.jobs.queue import Job, TooManyJobs
from backend.models.weight_files import CheckpointError, read_safetensors_metadata, sniff_format
from backend.services import Services
from backend.upscale.extras import check_request

log = logging.getLogger(__name__)
JOB_TIMEOUT_SECONDS = 24 * 3600
SUPPORTED_OVERRIDES = ("sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers")
EXTRA_GENERATION_KEYS = ("Lora hashes", "TI hashes")  # reported in info.extra_generation_params, as A1111
BUILTIN_UPSCALER_SCALE = 4  # what A1111 reports for None/Lanczos/Nearest (they have no scale of their own)


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


def _unsupported_fields(body: GenerationBody) -> list[str]:
    """Fields set to ask for something this version cannot do (never silently ignored)."""
    asked = {
        "restore_faces": body.restore_faces, "tiling": body.tiling,
        "styles": body.styles, "subseed_strength": body.subseed_strength, "refiner_checkpoint": body.refiner_checkpoint,
        "script_name": body.script_name,
    }
    if isinstance(body, Txt2ImgBody) and body.enable_hr:
        asked |= {
            "firstphase_width": body.firstphase_width, "firstphase_height": body.firstphase_height,
            "hr_checkpoint_name": body.hr_checkpoint_name not in HIRES_SAME,
            "hr_sampler_name": body.hr_sampler_name not in HIRES_SAME,
            "hr_scheduler": body.hr_scheduler not in HIRES_SAME,
            "hr_prompt": body.hr_prompt not in ("", body.prompt),
            "hr_negative_prompt": body.hr_negative_prompt not in ("", body.negative_prompt or ""),
        }
    return [name for name, value in asked.items() if value]


def checkpoint_problem(error: CheckpointError) -> str:
    """The error without the "checkpoint: " a lookup failure starts with (the caller names its own field)."""
    return str(error).removeprefix("checkpoint: ")


def _common_fields(body: GenerationBody, services: Services) -> dict[str, Any]:
    """The request fields txt2img and img2img share, from an A1111 body."""
    unsupported = _unsupported_fields(body)
    if unsupported:
        raise HTTPException(status_code=422, detail=f"{', '.join(unsupported)}: not supported by this version yet")
    overrides = dict(body.override_settings or {})
    checkpoint = overrides.pop("sd_model_checkpoint", None)
    vae = overrides.pop("sd_vae", "Automatic")
    clip_skip = overrides.pop("CLIP_stop_at_last_layers", 1)
    if overrides:
        raise HTTPException(status_code=422, detail=f"override_settings: unsupported option(s) {sorted(overrides)}; "
                                                    f"supported: {', '.join(SUPPORTED_OVERRIDES)}")
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
    return {
        "extension_args": _extension_args(body, services),
        "prompt": body.prompt, "negative_prompt": body.negative_prompt or "",
        "sampler_name": body.sampler_name or body.sampler_index, "scheduler": body.scheduler or "Automatic",
        "steps": body.steps, "cfg_scale": body.cfg_scale, "width": body.width, "height": body.height,
        "seed": body.seed, "batch_size": body.batch_size, "n_iter": body.n_iter, "checkpoint": checkpoint,
        "save_images": body.save_images, "sd_vae": str(vae), "clip_skip": clip_skip,
    }


def _extension_args(body: GenerationBody, services: Services) -> dict[str, Any]:
    """`extension_args`, plus A1111's `alwayson_scripts` ({name: {"args": [...]}}) addressed to an extension by
    its name; a name no loaded extension has is refused, not ignored."""
    loaded = {record.name.lower(): record.name for record in services.extensions.records if record.loaded}
    result: dict[str, Any] = {}
    for source, values in (("extension_args", body.extension_args), ("alwayson_scripts", body.alwayson_scripts)):
        for name, value in values.items():
            extension = loaded.get(str(name).lower())
            if extension is None:
                raise HTTPException(status_code=422, detail=f"{source}.{name}: no loaded extension of that name; "
                                                            f"loaded: {sorted(loaded.values()) or 'none'}")
            result[extension] = value if isinstance(value, dict) else {"args": value}
    return result


def _build(request_class, fields: dict[str, Any], services: Services):
    try:
        return build_request(request_class, fields, services.extensions.hooks.sampler_specs())
    except RequestError as error:
        raise HTTPException(status_code=422, detail=str(error)) from None


def txt2img_request(body: Txt2ImgBody, services: Services) -> Txt2ImgRequest:
    fields = _common_fields(body, services)
    if body.enable_hr:
        upscaler = body.hr_upscaler or "Latent"
        if upscaler not in LATENT_UPSCALE_MODES:
            _check(lambda: services.upscalers.resolve(upscaler, "hr_upscaler"))
        fields |= {"enable_hr": True, "hr_scale": body.hr_scale, "hr_resize_x": body.hr_resize_x,
                   "hr_resize_y": body.hr_resize_y, "hr_upscaler": upscaler,
                   "hr_second_pass_steps": body.hr_second_pass_steps, "denoising_strength": body.denoising_strength}
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
    if body.gfpgan_visibility or body.codeformer_visibility:
        raise HTTPException(status_code=422, detail="gfpgan_visibility/codeformer_visibility: face restoration is "
                                                    "not supported by this version yet")
    request = _build(ExtrasRequest, {
        "images": images, "resize_mode": body.resize_mode, "upscaling_resize": body.upscaling_resize,
        "upscaling_resize_w": body.upscaling_resize_w, "upscaling_resize_h": body.upscaling_resize_h,
        "upscaling_crop": body.upscaling_crop, "upscaler_1": body.upscaler_1, "upscaler_2": body.upscaler_2,
        "extras_upscaler_2_visibility": body.extras_upscaler_2_visibility, "save_images": False,
    }, services)
    _check(lambda: check_request(request, services.upscalers))
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
    if len(body.init_images) > 1:
        raise HTTPException(status_code=422, detail="init_images: more than one init image per request is not "
                                                    "supported by this version; give one")
    if body.mask_blur is None and body.mask_blur_x != body.mask_blur_y:
        raise HTTPException(status_code=422, detail="mask_blur_x/mask_blur_y: different blurs are not supported "
                                                    "by this version; give mask_blur")
    return _build(Img2ImgRequest, {
        **_common_fields(body, services), "init_image": image_bytes(body.init_images[0], "init_images[0]"),
        "mask": image_bytes(body.mask, "mask") if body.mask else None,
        "denoising_strength": body.denoising_strength, "resize_mode": body.resize_mode,
        "mask_blur": body.mask_blur if body.mask_blur is not None else body.mask_blur_x,
        "inpainting_fill": body.inpainting_fill, "inpaint_full_res": body.inpaint_full_res,
        "inpaint_full_res_padding": body.inpaint_full_res_padding,
        "inpainting_mask_invert": body.inpainting_mask_invert,
    }, services)


def finished_job_or_error(job: Job) -> Job:
    if not job.finished.wait(JOB_TIMEOUT_SECONDS):
        raise HTTPException(status_code=504, detail="the job did not finish in time")
    if job.status == "failed":
        raise HTTPException(status_code=job.error_status or 500, detail=job.error)
    return job


def generation_info(job: Job, services: Services) -> dict[str, Any]:
    request, images = job.request, job.result.images
    entry = services.models.resolve(request.checkpoint)
    parsed = parse_infotext(images[0].infotext) if images else {}
    return {
        # The prompts the images were made with (an extension such as wildcards may have resolved the request's).
        "prompt": images[0].prompt if images else request.prompt, "all_prompts": [image.prompt for image in images],
        "negative_prompt": images[0].negative_prompt if images else request.negative_prompt,
        "all_negative_prompts": [image.negative_prompt for image in images],
        "seed": images[0].seed if images else request.seed, "all_seeds": [image.seed for image in images],
        "subseed": -1, "all_subseeds": [-1] * len(images), "subseed_strength": 0,
        "width": request.width, "height": request.height, "sampler_name": parsed.get("Sampler", request.sampler_name),
        "scheduler": parsed.get("Schedule type", request.scheduler), "cfg_scale": request.cfg_scale,
        "steps": request.steps, "batch_size": request.batch_size, "restore_faces": False,
        "sd_model_name": entry.model_name, "sd_model_hash": entry.short_hash, "sd_vae_name": parsed.get("VAE"),
        "sd_vae_hash": parsed.get("VAE hash"), "seed_resize_from_w": -1, "seed_resize_from_h": -1,
        "denoising_strength": request.denoising_strength if isinstance(request, Img2ImgRequest) or (
            getattr(request, "enable_hr", False)) else None,
        "extra_generation_params": {key: parsed[key] for key in EXTRA_GENERATION_KEYS if key in parsed},
        "index_of_first_image": 0, "warnings": job.result.warnings,
        "infotexts": [image.infotext for image in images], "styles": [],
        "job_timestamp": datetime.datetime.fromtimestamp(job.created_at).strftime("%Y%m%d%H%M%S"),
        "clip_skip": int(parsed.get("Clip skip", 1)),
        "is_using_inpainting_conditioning": job.result.model_label.endswith("inpainting"), "task_id": job.id,
        "interrupted": job.status == "interrupted",
    }


def _png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate such as "\ud800": JSON can escape one, but it is not text
        return False
    return True


def _json_value_problem(value: Any, where: str) -> str | None:
    """Invalid to answer about: NaN/Infinity (Python's json reads them, but no response or error message holding
    one can be written back) and lone surrogates (they cannot be encoded). Walked with a stack: bodies can nest."""
    pending = [(value, where)]
    while pending:
        value, where = pending.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return f"{where or 'body'}: must be a finite number; got {value}"
        if isinstance(value, str) and not _is_text(value):
            return f"{where or 'body'}: not valid Unicode text (it holds a lone surrogate): {value[:40]!r}"
        if isinstance(value, dict):
            for key, item in value.items():
                if not _is_text(key):
                    return f"{where or 'body'}: the key {key[:40]!r} is not valid Unicode text"
                pending.append((item, f"{where}.{key}" if where else key))
        elif isinstance(value, list):
            pending.extend((item, f"{where}[{index}]") for index, item in enumerate(value))
    return None


async def refuse_unanswerable_json(request: Request):
    """A dependency of every API route (after the credentials): a JSON body holding NaN, Infinity or a lone
    surrogate gets a 422 naming the field. Left alone, such a value ends in a 500 when an answer or an error
    message echoing it is encoded."""
    if not await request.body():
        return
    try:
        body = await request.json()  # FastAPI has read and parsed it already; this is its cached copy
    except (ValueError, RecursionError):
        return  # not JSON: FastAPI answers that itself
    problem = _json_value_problem(body, "")
    if problem:
        raise HTTPException(status_code=422, detail=problem)


def basic_auth(pairs: list[tuple[str, str]] | None):
    """HTTP Basic for the API when credentials are given (the app's guard checks the same; this keeps the router
    safe on its own, as tests and other hosts mount it)."""
    if not pairs:
        return []
    security = HTTPBasic()

    def check(credentials: HTTPBasicCredentials = Depends(security)):
        if credentials_match((credentials.username, credentials.password), tuple(pairs)):
            return
        raise HTTPException(status_code=401, detail="Incorrect username or password",
                            headers={"WWW-Authenticate": "Basic"})

    return [Depends(check)]


def build_api_router(services: Services, auth: list[tuple[str, str]] | None = None) -> APIRouter:
    # Bad input and what this version cannot do both answer 422 with a `detail` naming the field (never a 5xx).
    api = APIRouter(prefix="/sdapi/v1", dependencies=[*basic_auth(auth), Depends(refuse_unanswerable_json)],
                    tags=["sdapi"], responses={
                        422: {"model": ApiError, "description": "Invalid or unsupported input"},
                        429: {"model": ApiError, "description": "This client has too many jobs queued or running"}})

    def submit(request, http: Request, job_id: str | None = None) -> Job:
        try:
            return services.jobs.submit(request, job_id=job_id, client=http.client.host if http.client else None)
        except TooManyJobs as error:
            raise HTTPException(status_code=429, detail=str(error)) from None
        except ValueError as error:
            raise HTTPException(status_code=409, detail=str(error)) from None

    def run(request, body: GenerationBody, http: Request) -> GenerationResponse:
        job = finished_job_or_error(submit(request, http, body.force_task_id))
        images = [base64.b64encode(image.png).decode() for image in job.result.images] if body.send_images else []
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

    def run_extras(request: ExtrasRequest, http: Request) -> list:
        job = finished_job_or_error(submit(request, http))
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

    @api.post("/png-info", response_model=PngInfoResponse)
    def png_info(body: PngInfoBody):
        image = decode_image(body.image, "image")
        info = read_infotext(image) or ""
        items = {key: value for key, value in image.info.items() if isinstance(value, str)}
        items.pop("parameters", None)
        return PngInfoResponse(info=info, items=items, parameters=parse_infotext(info) if info else {})

    def job_for(id_task: str | None) -> Job | None:
        """The job a client names (id_task = its force_task_id), or the running one as A1111 does."""
        if not id_task:
            return services.jobs.running()
        job = services.jobs.get(id_task)
        if job is None:
            raise HTTPException(status_code=404, detail=f"id_task: no job with id '{id_task}'")
        return job

    @api.get("/progress", response_model=ProgressResponse)
    def progress(skip_current_image: bool = False, id_task: str | None = Query(None)):
        job = job_for(id_task)
        if job is None:
            return ProgressResponse(progress=0, eta_relative=0, current_image=None, textinfo=None, state={
                "skipped": False, "interrupted": False, "job": "", "job_count": 0, "job_timestamp": "0",
                "job_no": 0, "sampling_step": 0, "sampling_steps": 0})
        p = job.progress
        fraction = 1.0 if job.done else p.fraction
        preview = p.preview if (p.preview is not None and not skip_current_image) else None
        return ProgressResponse(
            progress=fraction, eta_relative=0.0 if job.done else (p.eta_seconds or 0.0),
            current_image=_png_base64(preview) if preview is not None else None,
            textinfo=job.error, current_task=job.id, queue_position=services.jobs.position(job), status=job.status,
            state={"skipped": p.skip_requested, "interrupted": p.interrupt_requested, "job": job.id,
                   "job_count": len(services.jobs.pending()),
                   "job_timestamp": datetime.datetime.fromtimestamp(job.created_at).strftime("%Y%m%d%H%M%S"),
                   "job_no": p.batch, "sampling_step": p.step, "sampling_steps": p.steps_per_batch})

    @api.post("/interrupt")
    def interrupt(id_task: str | None = Query(None)):
        """Interrupt the given job (id_task), or the running job as A1111 does."""
        job = job_for(id_task)
        return {"interrupted": bool(job and services.jobs.interrupt(job.id)), "task_id": job and job.id}

    @api.post("/skip")
    def skip(id_task: str | None = Query(None)):
        job = job_for(id_task)
        return {"skipped": bool(job and services.jobs.skip(job.id)), "task_id": job and job.id}

    @api.get("/options")
    def get_options():
        selected = services.models.selected
        settings = services.settings
        return {
            "sd_model_checkpoint": selected.title, "sd_checkpoint_hash": selected.sha256,
            "samples_format": "png", "samples_save": True,
            "outdir_txt2img_samples": str(services.outputs.root / "txt2img-images"),
            "outdir_img2img_samples": str(services.outputs.root / "img2img-images"),
            "outdir_extras_samples": str(services.outputs.root / "extras-images"),
            "sd_checkpoints_limit": settings.max_models_in_memory,
            "live_previews_enable": settings.preview_every > 0,
            "show_progress_every_n_steps": settings.preview_every, "CLIP_stop_at_last_layers": 1,
            "sd_vae": "Automatic",
        }

    @api.post("/options")
    def set_options(options: dict[str, Any] = Body(...)):
        """Only sd_model_checkpoint can be set (other settings travel in each request); the rest are reported."""
        if "sd_model_checkpoint" in options:
            try:
                services.models.select(str(options["sd_model_checkpoint"]))
            except CheckpointError as error:
                raise HTTPException(status_code=422,
                                    detail=f"sd_model_checkpoint: {checkpoint_problem(error)}") from None
        ignored = sorted(key for key in options if key != "sd_model_checkpoint")
        if ignored:
            log.info("POST /sdapi/v1/options: ignored read-only or unknown options %s", ignored)
        return {"ignored": ignored}

    @api.get("/sd-models", response_model=list[CheckpointItem])
    def sd_models():
        return [CheckpointItem(title=e.title, model_name=e.model_name, hash=e.short_hash, sha256=e.sha256,
                               filename=str(e.path)) for e in services.models.list_checkpoints()]

    @api.post("/refresh-checkpoints")
    def refresh_checkpoints():
        services.models.refresh()
        return {"count": len(services.models.list_checkpoints())}

    @api.get("/samplers", response_model=list[SamplerItem])
    def samplers():
        table = sampler_table(services.extensions.hooks.sampler_specs())
        return [SamplerItem(name=name, aliases=list(spec.aliases), options={"scheduler": spec.default_schedule})
                for name, spec in table.items()]

    @api.get("/schedulers", response_model=list[SchedulerItem])
    def schedulers():
        return [SchedulerItem(name=schedule_api_name(label), label=label) for label in SCHEDULE_NAMES]

    @api.get("/upscalers", response_model=list[UpscalerItem])
    def upscalers():
        """Usable upscalers only (a file that cannot be loaded is left out here; the UI shows why)."""
        return [UpscalerItem(name=entry.name, model_name=entry.path.stem if entry.path else None,
                             model_path=str(entry.path) if entry.path else None, model_url=None,
                             scale=entry.scale if entry.path else BUILTIN_UPSCALER_SCALE)
                for entry in services.upscalers.entries if entry.usable]

    @api.get("/latent-upscale-modes", response_model=list[LatentUpscaleModeItem])
    def latent_upscale_modes():
        return [LatentUpscaleModeItem(name=name) for name in LATENT_UPSCALE_MODES]

    @api.get("/loras", response_model=list[LoraItem])
    def loras():
        return [LoraItem(name=entry.name, alias=entry.name, path=str(entry.path),
                         metadata=lora_metadata(entry.path)) for entry in services.networks.loras.entries]

    @api.post("/refresh-loras")
    def refresh_loras():
        services.networks.loras.refresh()
        return {"count": len(services.networks.loras.entries)}

    @api.get("/sd-vae", response_model=list[VaeItem])
    def sd_vae():
        return [VaeItem(model_name=entry.file_name, filename=str(entry.path))
                for entry in services.networks.vaes.files.entries]

    @api.post("/refresh-vae")
    def refresh_vae():
        services.networks.vaes.refresh()
        return {"count": len(services.networks.vaes.files.entries)}

    @api.get("/embeddings", response_model=EmbeddingsResponse)
    def embeddings():
        """Every readable embedding file is "loaded" (which ones fit a model is decided per job, with a
        warning when one does not); a file that cannot be read is "skipped" with the reason."""
        loaded, failed = services.networks.embeddings.all()
        return EmbeddingsResponse(
            loaded={e.name: EmbeddingItem(step=e.step, shape=e.widths[0], vectors=e.length) for e in loaded},
            skipped={name: EmbeddingItem(error=reason) for name, reason in failed.items()})

    @api.post("/refresh-embeddings")
    def refresh_embeddings():
        services.networks.embeddings.refresh()
        return {"count": len(services.networks.embeddings.files.entries)}

    @api.get("/prompt-styles", response_model=list[PromptStyleItem])
    def prompt_styles():
        """A1111's styles.csv (name, prompt, negative_prompt) from the data folder, if present."""
        path = services.settings.styles_file
        if not path.is_file():
            return []
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return [PromptStyleItem(name=row.get("name", ""), prompt=row.get("prompt"),
                                    negative_prompt=row.get("negative_prompt")) for row in csv.DictReader(handle)]

    @api.get("/memory")
    def memory():
        ram = psutil.virtual_memory()
        process = psutil.Process()
        result = {"ram": {"free": ram.available, "used": process.memory_info().rss, "total": ram.total}}
        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            result["cuda"] = {"system": {"free": free, "used": total - free, "total": total},
                              "active": {"peak": torch.cuda.max_memory_allocated()}}
        else:
            result["cuda"] = {"error": "CUDA is not available"}
        return result

    return api


def build_extension_router(services: Services, auth: list[tuple[str, str]] | None = None) -> APIRouter:
    """Extensions' REST routes, each under /extensions/<extension>/, behind the API's credentials."""
    router = APIRouter(prefix="/extensions", dependencies=[*basic_auth(auth), Depends(refuse_unanswerable_json)],
                       tags=["extensions"])
    for route in services.extensions.hooks.routes:
        path, endpoint, methods = route.value
        router.add_api_route(f"/{route.extension}/{path}", endpoint, methods=list(methods))
    return router
