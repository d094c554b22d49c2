"""LoRAs named in a prompt (`<lora:name:weight>`), applied for one job and removed afterwards.

diffusers (with peft) reads kohya/A1111 and diffusers key layouts and adds the low-rank layers beside the
base weights instead of merging them in, so unloading gives back exactly the base model.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass

from backend.core.model_family import ModelFamily
from backend.models.construction import ModelConstruction
from backend.models.network_files import NetworkFile
from backend.models.weight_files import CheckpointError, load_state_dict

log = logging.getLogger(__name__)
LORA_EXTENSIONS = (".safetensors", ".pt", ".ckpt")
# Flux: kohya's lora_unet_double_blocks_*, BFL/xlabs double_blocks.*, diffusers' single_transformer_blocks.*
FLUX_KEY_MARKERS = ("double_blocks", "single_blocks", "single_transformer_blocks")
# SD3's original and kohya layouts; diffusers' transformer_blocks.* are both families' names (then loading decides)
SD3_KEY_MARKERS = ("joint_blocks",)
KIND_LABELS = {"sdxl": "SDXL", "sd": "SD1.x/SD2.x", "flux": "Flux.1", "sd3": "SD3"}
SDXL_KEY_MARKERS = ("lora_te1_", "lora_te2_", "text_encoder_2.", "input_blocks_4_1_", "input_blocks.4.1.")


@dataclass(frozen=True)
class LoraUse:
    file: NetworkFile
    text_encoder_weight: float
    unet_weight: float


def lora_family(state: dict) -> str | None:
    """"flux", "sd3", "sdxl" or "sd" from the key layout alone (None when it cannot tell), to explain a mismatch
    plainly."""
    keys = list(state)
    if any(marker in key for key in keys for marker in FLUX_KEY_MARKERS):
        return "flux"
    if any(marker in key for key in keys for marker in SD3_KEY_MARKERS):
        return "sd3"
    if any(marker in key for key in keys for marker in SDXL_KEY_MARKERS):
        return "sdxl"
    if any(key.startswith(("lora_te_", "text_encoder.")) for key in keys):
        return "sd"
    return None


@contextmanager
def applied_loras(pipeline, family: ModelFamily, uses: list[LoraUse], warnings: list[str],
                  construction: ModelConstruction):
    """Load `uses` into the shared modules of `pipeline` for the duration of the block; each LoRA that
    cannot be used becomes a warning instead of failing the job. Yields the uses that were applied. The LoRA
    layers are built inside `construction` (the app's lock for building modules)."""
    applied: list[LoraUse] = []
    try:
        for index, use in enumerate(uses):
            adapter = f"job_lora_{index}"
            try:
                state = load_state_dict(use.file.path)
            except CheckpointError as error:
                warnings.append(f"LoRA {use.file.name} ignored: {error}")
                continue
            made_for = lora_family(state)
            model_kind = family if family in ("flux", "sd3") else "sdxl" if family.startswith("sdxl") else "sd"
            if made_for and made_for != model_kind:
                warnings.append(f"LoRA {use.file.name} ignored: it was made for {KIND_LABELS[made_for]}, this model "
                                f"is {KIND_LABELS[model_kind]}")
                continue
            try:
                with construction.building():
                    pipeline.load_lora_weights(state, adapter_name=adapter)
            except (ValueError, RuntimeError, KeyError) as error:
                _remove_adapter(pipeline, adapter)
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                warnings.append(f"LoRA {use.file.name} ignored: it does not fit this model ({first_line[:200]})")
                continue
            applied.append(use)
        if applied:
            names = [f"job_lora_{uses.index(use)}" for use in applied]
            if getattr(pipeline, "transformer", None) is not None:  # Flux, SD3: one weight per LoRA
                pipeline.set_adapters(names, [use.unet_weight for use in applied])
            else:
                pipeline.set_adapters(names, [
                    {"unet": use.unet_weight, "text_encoder": use.text_encoder_weight,
                     "text_encoder_2": use.text_encoder_weight} for use in applied])
        yield applied
    finally:
        if any(_has_peft(module) for module in _lora_modules(pipeline)):
            pipeline.unload_lora_weights()  # removes the adapter layers: the base modules are as before


def _lora_modules(pipeline):
    return [getattr(pipeline, name, None) for name in ("unet", "transformer", "text_encoder", "text_encoder_2")
            if getattr(pipeline, name, None) is not None]


def _has_peft(module) -> bool:
    return bool(getattr(module, "peft_config", None))


def _remove_adapter(pipeline, adapter: str):
    """A half-loaded adapter (one component loaded, the next failed) must not leak into the job."""
    for module in _lora_modules(pipeline):
        if adapter in (getattr(module, "peft_config", None) or {}):
            try:
                pipeline.delete_adapters(adapter)
            except (ValueError, KeyError):
                log.debug("could not delete adapter %s", adapter, exc_info=True)
            return

