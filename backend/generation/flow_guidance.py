"""Guidance for the flow-matching models, as Forge has it. Flux dev's guidance is distilled into the model: Forge's
"Distilled CFG Scale" feeds that embedding, and "CFG scale" is real classifier-free guidance, 1 (off, the negative
prompt unused) unless the user sets it. SD3/SD3.5 use CFG as SD does."""
from __future__ import annotations

import inspect
from pathlib import Path

import torch

from backend.core.requests import GenerationRequest, RequestError

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
    return {"guidance_scale": request.cfg_scale if cfg_scale is None else cfg_scale}


def flow_infotext(request: GenerationRequest, model) -> dict:
    """Forge's keys: "Distilled CFG Scale" (Flux models with a guidance embedding), "Shift" when set."""
    parameters: dict = {}
    transformer = getattr(model.pipeline, "transformer", None)
    if model.family == "flux" and transformer is not None and transformer.config.guidance_embeds:
        parameters["Distilled CFG Scale"] = request.distilled_cfg_scale
    if request.shift:
        parameters["Shift"] = request.shift
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
