"""Speed and memory trade-offs, chosen by the operator (flags) and applied where a model is placed on its
device or a job decodes: model/sequential CPU offload (--medvram / --lowvram), torch.compile of the UNet with a
persistent compile cache (--compile), and tiled VAE decoding for large images (--tiled-vae).
All of it is diffusers' and torch's own machinery; this module only decides when to use which.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager

import torch

from backend.core.speed_settings import SpeedOptions

log = logging.getLogger(__name__)


def place(pipeline, device: torch.device, options: SpeedOptions) -> str:
    """Put the pipeline where it runs; returns a status line. Offloading keeps the weights in RAM and moves
    each model (or each layer) to the GPU only while it works: slower, for cards with little memory."""
    if options.offload == "none" or device.type == "cpu":
        pipeline.to(device)
        return "placement: whole model on " + device.type + (
            f" (--{'medvram' if options.offload == 'model' else 'lowvram'} needs a GPU; ignored)"
            if options.offload != "none" else "")
    if options.offload == "model":
        pipeline.enable_model_cpu_offload(device=device)
        return f"placement: model CPU offload to {device.type} (--medvram)"
    pipeline.enable_sequential_cpu_offload(device=device)
    return f"placement: sequential CPU offload to {device.type} (--lowvram)"


def component_placement(pipeline) -> dict[str, str]:
    """Where each model of the pipeline sits now, in words: "cuda:0", "cpu", or held in RAM and moved to the GPU
    while it works (--medvram: the whole model; --lowvram: layer by layer)."""
    placement = {}
    for name, component in pipeline.components.items():
        if not isinstance(component, torch.nn.Module):
            continue
        hook = getattr(component, "_hf_hook", None)
        if type(hook).__name__ == "CpuOffload":  # enable_model_cpu_offload's hook on the model itself
            placement[name] = f"RAM, moved to {hook.execution_device} while it runs (--medvram)"
        elif _layer_offload_device(component) is not None:
            placement[name] = f"RAM, each layer moved to {_layer_offload_device(component)} as it runs (--lowvram)"
        else:
            parameter = next(component.parameters(), None)
            placement[name] = str(parameter.device) if parameter is not None else "no weights"
    return placement


def _layer_offload_device(module: torch.nn.Module):
    """The execution device of enable_sequential_cpu_offload's per-layer hooks, or None without them."""
    for child in module.modules():
        hook = getattr(child, "_hf_hook", None)
        if hook is not None and getattr(hook, "offload", False):
            return hook.execution_device
    return None


def compile_unet(pipeline, device: torch.device, options: SpeedOptions) -> str:
    """torch.compile the UNet in place (the cached model's own pipeline, once per load). The first job after a
    load pays the compile time; kernels are kept in `compile_cache_dir`, so a restart compiles much faster.
    Shapes are dynamic after the first new size (a WebUI sees many sizes; fixed shapes would recompile each time).
    QKV projections are not fused: LoRAs are applied to the separate q/k/v layers and would be ignored."""
    if not options.compile:
        return "compile: off"
    if options.offload != "none":  # offload hooks move weights while the compiled graph runs: not combined
        return "compile: off (not combined with --medvram/--lowvram)"
    if options.compile_cache_dir is not None:
        options.compile_cache_dir.mkdir(parents=True, exist_ok=True)
        # inductor reads this variable whenever it looks for its cache (app.py passes the operator's own, if set)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(options.compile_cache_dir)
    # Flux and SD3 denoise with a transformer (4-D channels_last does not apply to its token sequences)
    name = "unet" if getattr(pipeline, "unet", None) is not None else "transformer"
    channels_last = device.type == "cuda" and name == "unet"
    if channels_last:
        pipeline.unet.to(memory_format=torch.channels_last)
    setattr(pipeline, name, torch.compile(getattr(pipeline, name), mode="max-autotune-no-cudagraphs"
                                          if device.type == "cuda" else "default"))
    return f"compile: torch.compile {'UNet' if name == 'unet' else 'transformer'}" + (
        " + channels_last" if channels_last else "")


@contextmanager
def vae_tiling(vae, enabled: bool):
    """Decode in overlapping tiles for this job only: the VAE module is shared with the cached model, so its
    previous mode is restored afterwards (jobs run one at a time on the worker)."""
    if not enabled or not hasattr(vae, "enable_tiling"):
        yield False
        return
    was_tiling = getattr(vae, "use_tiling", False)
    vae.enable_tiling()
    try:
        yield True
    finally:
        if not was_tiling:
            vae.disable_tiling()
