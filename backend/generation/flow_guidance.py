"""Guidance for the flow-matching models, as Forge has it. Flux dev's guidance is distilled into the model: Forge's
"Distilled CFG Scale" feeds that embedding, and "CFG scale" is real classifier-free guidance, 1 (off, the negative
prompt unused) unless the user sets it. SD3/SD3.5 use CFG as SD does."""
from __future__ import annotations

import inspect
from pathlib import Path

import torch

from backend.core.requests import GenerationRequest, Img2ImgRequest, RequestError
from backend.core.skip_layer_guidance import INFOTEXT_KEYS as SLG_INFOTEXT_KEYS
from backend.core.skip_layer_guidance import layers_text

FLUX_DEFAULT_CFG = 1.0


def is_flux(pipeline) -> bool:
    return type(pipeline).__name__.startswith("Flux")


def is_flow(pipeline) -> bool:
    """A Flux or SD3 pipeline (a transformer on flow-matching latents)."""
    return getattr(pipeline, "transformer", None) is not None


def effective_cfg(request: GenerationRequest, family: str) -> float:
    """The CFG scale the job runs with: Flux's own default when the request left it unset."""
    if family == "flux" and "cfg_scale" not in request.model_fields_set:
        return FLUX_DEFAULT_CFG
    return request.cfg_scale


def guidance_arguments(request: GenerationRequest, pipeline, cfg_scale: float | None = None) -> dict:
    """The pipeline call's guidance keywords. `cfg_scale`: the scale of this pass (the request's by default)."""
    if is_flux(pipeline):
        cfg = effective_cfg(request, "flux") if cfg_scale is None else cfg_scale
        if "true_cfg_scale" not in inspect.signature(pipeline.__call__).parameters:  # FluxFillPipeline
            if cfg > 1:
                raise RequestError("cfg_scale", f"{cfg} needs a negative pass, which Flux Fill has not: set CFG scale "
                                                "to 1 and guide with Distilled CFG Scale")
            return {"guidance_scale": request.distilled_cfg_scale}
        return {"guidance_scale": request.distilled_cfg_scale, "true_cfg_scale": cfg}
    arguments = {"guidance_scale": request.cfg_scale if cfg_scale is None else cfg_scale}
    if request.skip_guidance_layers and "skip_guidance_layers" in inspect.signature(pipeline.__call__).parameters:
        arguments.update(skip_guidance_layers=request.skip_guidance_layers,
                         skip_layer_guidance_scale=request.skip_layer_guidance_scale,
                         skip_layer_guidance_start=request.skip_layer_guidance_start,
                         skip_layer_guidance_stop=request.skip_layer_guidance_stop)
    return arguments


def flow_infotext(request: GenerationRequest, model) -> dict:
    """Forge's keys: "Distilled CFG Scale" (Flux models with a guidance embedding), "Shift" when set."""
    parameters: dict = {}
    transformer = getattr(model.pipeline, "transformer", None)
    if model.family == "flux" and transformer is not None and transformer.config.guidance_embeds:
        parameters["Distilled CFG Scale"] = request.distilled_cfg_scale
    if request.shift:
        parameters["Shift"] = request.shift
    if request.skip_guidance_layers:
        values = (layers_text(request.skip_guidance_layers), request.skip_layer_guidance_scale,
                  request.skip_layer_guidance_start, request.skip_layer_guidance_stop)
        parameters.update(zip(SLG_INFOTEXT_KEYS, values))
    separate = [Path(source).stem for part, source in (model.sources or {}).items()
                if part != "transformer" and source != "checkpoint" and Path(source).suffix]
    for number, name in enumerate(separate, start=1):  # Forge's keys for the VAE / text encoder files used
        parameters[f"Module {number}"] = name
    return parameters


def flow_warnings(request: GenerationRequest, family: str) -> list[str]:
    if family == "flux" and effective_cfg(request, family) <= 1 and request.negative_prompt.strip():
        return ["negative prompt ignored: Flux uses it only with CFG scale above 1 (its guidance is distilled; "
                "set Distilled CFG Scale instead, or raise CFG scale for real guidance at twice the time)"]
    return []


def preview_latent(latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The batch's first latent as (channels, h, w). Flux holds its latents packed: each token is a 2x2 patch of
    16 channels, in rows; the rows follow the image's aspect ratio (`width` x `height`, any pass's size)."""
    if latents.ndim == 4:
        return latents[0]
    tokens, packed = latents.shape[1:]
    rows = max(1, round((tokens * height / width) ** 0.5))
    columns, channels = tokens // rows, packed // 4
    patches = latents[0, : rows * columns].reshape(rows, columns, channels, 2, 2)
    return patches.permute(2, 0, 3, 1, 4).reshape(channels, rows * 2, columns * 2)


def check_flow_request(request: GenerationRequest, label: str):
    """What does not work with Flux/SD3 models yet is refused by name, never silently ignored."""
    unsupported = {
        "subseed_strength": request.subseed_strength > 0,
        "seed_resize_from_w": min(request.seed_resize_from_w, request.seed_resize_from_h) > 0,
        "tiling": request.tiling,
        "refiner_checkpoint": bool(request.refiner_checkpoint),
    }
    for field, asked in unsupported.items():
        if asked:
            raise RequestError(field, f"does not work with {label} models yet")


def check_skip_layer_guidance(request: GenerationRequest, model):
    """Skip-layer guidance runs in SD3/SD3.5 txt2img (diffusers' StableDiffusion3Pipeline; its img2img and inpaint
    pipelines have none) with CFG on; anything else is refused by name."""
    layers = request.skip_guidance_layers
    if not layers:
        return
    if model.family != "sd3":
        raise RequestError("skip_guidance_layers", f"skip-layer guidance works only with SD3/SD3.5 models, not "
                                                   f"{model.label}; leave the layers empty")
    if isinstance(request, Img2ImgRequest):
        raise RequestError("skip_guidance_layers", "skip-layer guidance works in txt2img only (SD3's img2img and "
                                                   "inpainting have none); leave the layers empty")
    if request.cfg_scale <= 1:
        raise RequestError("cfg_scale", "skip-layer guidance acts with CFG only: set CFG scale above 1")
    count = model.pipeline.transformer.config.num_layers
    if layers[-1] >= count:
        raise RequestError("skip_guidance_layers", f"this model's layers are 0 to {count - 1}; got {layers[-1]}")
