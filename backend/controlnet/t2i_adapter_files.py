"""T2I-Adapters in models/ControlNet, served by the ControlNet units: diffusers' T2IAdapter (folders with their
config.json, or single files of its keys) and TencentARC's published single files of the v2 kind
(t2iadapter_*_sd15v2.pth: pixel-unshuffled input, 1x1 skip-free resnet blocks), converted to diffusers' keys.

The older v1 files (t2iadapter_*_sd14v1: a skip convolution per block), the light (color) and style adapters have
other architectures and are refused with a message saying so.
"""
from __future__ import annotations

import re

import torch

from backend.core.errors import UserError
from backend.core.model_family import FAMILY_LABELS
from backend.models.weight_files import CheckpointError

ORIGINAL_RES_BLOCKS = 2  # every published v2 adapter has two resnet blocks per level
DOWNSCALE = {"full_adapter": 8, "full_adapter_xl": 16}


class AdapterMismatch(UserError):
    """A T2I-Adapter made for another model family or UNet than the checkpoint in use."""


def is_t2i_adapter(state: dict[str, torch.Tensor], declared: dict | None) -> bool:
    if declared is not None:
        return declared.get("_class_name") == "T2IAdapter"
    return "adapter.conv_in.weight" in state or "adapter.body.0.in_conv.weight" in state or (
        "conv_in.weight" in state and any(key.startswith("body.0.") for key in state))


def _original_to_diffusers(state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    if any(".skep." in key for key in state):
        raise CheckpointError(f"{name} is a v1 T2I-Adapter (sd14v1, with skip convolutions); only the v2 adapters "
                              "(e.g. t2iadapter_canny_sd15v2) and diffusers' T2IAdapter files are supported")
    converted = {}
    for key, value in state.items():
        if key.startswith("conv_in."):
            converted[f"adapter.{key}"] = value
            continue
        match = re.fullmatch(r"body\.(\d+)\.(in_conv|block1|block2)\.(weight|bias)", key)
        if match is None:
            raise CheckpointError(f"{name}: unexpected T2I-Adapter weight '{key}' (light/style adapters are not "
                                  "supported)")
        index, part, kind = int(match.group(1)), match.group(2), match.group(3)
        level, block = divmod(index, ORIGINAL_RES_BLOCKS)
        target = f"adapter.body.{level}.in_conv" if part == "in_conv" else \
            f"adapter.body.{level}.resnets.{block}.{part}"
        converted[f"{target}.{kind}"] = value
    return converted


def _levels(state: dict[str, torch.Tensor]) -> list[int]:
    return sorted({int(m.group(1)) for key in state if (m := re.match(r"adapter\.body\.(\d+)\.", key))})


def adapter_weights(state: dict[str, torch.Tensor], declared: dict | None, name: str) -> tuple[dict, dict]:
    """(weights under diffusers' T2IAdapter keys, its config)."""
    if not any(key.startswith("adapter.") for key in state):
        state = _original_to_diffusers(state, name)
    if declared is not None:
        config = {key: value for key, value in declared.items() if not key.startswith("_")}
        return state, config
    levels = _levels(state)
    channels = [state[f"adapter.body.{level}.resnets.0.block1.weight"].shape[0] for level in levels]
    res_blocks = len({m.group(1) for key in state if (m := re.match(r"adapter\.body\.0\.resnets\.(\d+)\.", key))})
    # the layouts differ only in the unshuffle factor: SDXL's 16 gives 256 inputs per image channel, SD's 8 gives 64
    inputs = state["adapter.conv_in.weight"].shape[1]
    adapter_type = "full_adapter_xl" if inputs in (256, 768) else "full_adapter"
    downscale = DOWNSCALE[adapter_type]
    in_channels = inputs // downscale ** 2
    return state, {"in_channels": in_channels, "channels": channels, "num_res_blocks": res_blocks,
                   "downscale_factor": downscale, "adapter_type": adapter_type}


def check_fits(config: dict, title: str, unet_config: dict, checkpoint_family: str, checkpoint: str, field: str):
    """The adapter's feature widths must be the UNet's block widths; an SDXL adapter needs an SDXL checkpoint."""
    made_for = "sdxl" if config.get("adapter_type") == "full_adapter_xl" else None
    family = FAMILY_LABELS.get(checkpoint_family, checkpoint_family)
    if made_for == "sdxl" and not checkpoint_family.startswith("sdxl") or \
            made_for is None and checkpoint_family.startswith("sdxl"):
        adapter_family = "SDXL" if made_for == "sdxl" else "SD1.x/SD2.x"
        raise AdapterMismatch(field, f"T2I-Adapter '{title}' is an {adapter_family} adapter but the checkpoint "
                                     f"'{checkpoint}' is {family}; pick a T2I-Adapter for {family}")
    widths = list(unet_config.get("block_out_channels", ()))
    if list(config["channels"]) != widths:
        raise AdapterMismatch(field, f"T2I-Adapter '{title}' gives features of widths {list(config['channels'])} "
                                     f"but the checkpoint '{checkpoint}' ({family}) has blocks of {widths}")


def build_adapter(entry, state: dict, declared: dict | None, unet_config: dict, checkpoint_family: str,
                  checkpoint: str, dtype: torch.dtype, field: str = "model"):
    """diffusers' T2IAdapter of `entry` on the CPU in `dtype`, checked against the checkpoint's UNet."""
    from accelerate import init_empty_weights
    from diffusers import T2IAdapter

    from backend.models.loader import materialise

    state, config = adapter_weights(state, declared, entry.weights_file().name)
    check_fits(config, entry.title, unet_config, checkpoint_family, checkpoint, field)
    with init_empty_weights():
        model = T2IAdapter.from_config(config)
    return materialise(model, state, dtype, f"T2I-Adapter {entry.name}")
