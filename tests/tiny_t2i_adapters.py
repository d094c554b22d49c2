"""Tiny T2I-Adapters whose feature widths fit the tiny UNets (tools/tiny_models.py), written as users get them:
TencentARC's v2 single file (t2iadapter_*_sd15v2 keys), a diffusers single file, or a diffusers folder."""
from __future__ import annotations

import re
from pathlib import Path

import torch
from diffusers import T2IAdapter

from tools.tiny_controlnets import write_weights
from tools.tiny_models import tiny_components


def tiny_adapter(family: str, seed: int = 0, strength: float = 0.05, in_channels: int = 1) -> T2IAdapter:
    unet = tiny_components(family, seed)["unet"]
    xl = family.startswith("sdxl")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 2000)
        adapter = T2IAdapter(in_channels=in_channels, channels=list(unet.config.block_out_channels),
                             num_res_blocks=2, downscale_factor=16 if xl else 8,
                             adapter_type="full_adapter_xl" if xl else "full_adapter")
        for parameter in adapter.parameters():
            torch.nn.init.normal_(parameter, std=strength)
    return adapter.eval()


def to_original(adapter: T2IAdapter) -> dict[str, torch.Tensor]:
    """TencentARC's key names (the inverse of diffusers' convert_original_t2iadapter for the v2 adapters)."""
    out = {}
    for key, value in adapter.state_dict().items():
        key = key.removeprefix("adapter.")
        if (match := re.fullmatch(r"body\.(\d+)\.resnets\.(\d+)\.(.+)", key)) is not None:
            key = f"body.{int(match.group(1)) * 2 + int(match.group(2))}.{match.group(3)}"
        elif (match := re.fullmatch(r"body\.(\d+)\.in_conv\.(.+)", key)) is not None:
            key = f"body.{int(match.group(1)) * 2}.in_conv.{match.group(2)}"
        out[key] = value.detach().contiguous().clone()
    return out


def write_tiny_adapter(path: Path, family: str = "sd1", seed: int = 0, layout: str = "original",
                       strength: float = 0.05) -> Path:
    """`layout`: "original" (TencentARC's keys; .pth via torch.save), "diffusers" (one file) or "folder"."""
    adapter = tiny_adapter(family, seed, strength)
    if layout == "folder":
        adapter.save_pretrained(str(path), safe_serialization=True)
        return path
    state = to_original(adapter) if layout == "original" else {
        key: value.detach().contiguous().clone() for key, value in adapter.state_dict().items()}
    return write_weights(path, state)
