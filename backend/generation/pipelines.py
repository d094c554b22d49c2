"""Per-job diffusers pipelines built from a cached model's components (no weights copied)."""
from __future__ import annotations

import inspect

import torch

from backend.core.model_family import FLOW_FAMILIES
from backend.core.requests import RequestError
from backend.models.loader import LoadedModel
from backend.models.pipeline_classes import PIPELINE_CLASSES


def job_pipeline(model: LoadedModel, task: str, scheduler, checkpoint_title: str, vae=None):
    """A pipeline for `task` ("txt2img", "img2img", "inpaint") sharing every module with the cached one
    but with its own scheduler (and `vae` when the job chose another), so per-request choices never mutate
    shared state."""
    if model.family == "sdxl-refiner" and task != "img2img":
        raise RequestError("checkpoint", f"{checkpoint_title} is an SDXL refiner; it only does img2img without a mask")
    if model.inpainting and task != "inpaint":
        raise RequestError("checkpoint", f"{checkpoint_title} is an {model.label} model; "
                                         "use it in the inpaint tab (or img2img with a mask)")
    import diffusers

    kind = model.family if model.family in FLOW_FAMILIES else "sdxl" if model.family.startswith("sdxl") else "sd"
    if kind == "flux" and model.inpainting:  # Flux Fill: the masked image and mask are its extra input
        kind = "flux-fill"
    cls = getattr(diffusers, PIPELINE_CLASSES[(kind, task)])
    base = model.pipeline
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {name: module for name, module in base.components.items() if name in accepted}
    kwargs["scheduler"] = scheduler
    if vae is not None:
        kwargs["vae"] = vae
    kwargs.update({k: v for k, v in base.config.items() if k in accepted and k not in kwargs and not k.startswith("_")})
    for name, parameter in accepted.items():  # optional components the cached pipeline does not have
        if name not in kwargs and name != "self" and parameter.default is inspect.Parameter.empty:
            kwargs[name] = None
    pipeline = cls(**kwargs)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def seeded_generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per image: the same seed gives the same image on any device and in any batch."""
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
