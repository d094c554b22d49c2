"""Tiny ControlNets made from the tiny UNets (tools/tiny_models.py), written in the layouts users download:
lllyasviel's original single file (v1.0 "control_model.*" keys or v1.1 bare keys, .pth or .safetensors), a
diffusers single file, and a diffusers folder."""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import ControlNetModel
from safetensors.torch import save_file

from backend.models.original_layout import _UNET_RESNET, _unet_prefix_map
from tools.tiny_models import tiny_components


def tiny_controlnet(family: str, seed: int = 0, strength: float = 0.0) -> ControlNetModel:
    """A ControlNet copied from the tiny `family` UNet of `seed`. Its zero convolutions start at zero, as in
    training, so `strength` fills them with seeded noise of that size to make it change images."""
    unet = tiny_components(family, seed)["unet"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1000)
        controlnet = ControlNetModel.from_unet(unet)
        if strength:
            for block in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                          controlnet.controlnet_cond_embedding.conv_out):
                torch.nn.init.normal_(block.weight, std=strength)
    return controlnet.eval()


def controlnet_to_original(controlnet: ControlNetModel, prefix: str = "control_model.") -> dict[str, torch.Tensor]:
    """The weights under lllyasviel's key names (the inverse of diffusers' convert_controlnet_checkpoint)."""
    config = dict(controlnet.config)
    config["up_block_types"] = [t.replace("Down", "Up") for t in reversed(config["down_block_types"])]
    prefix_map = {key: value for key, value in _unet_prefix_map(config).items() if not key.startswith("up_blocks")}
    hint_blocks = len(controlnet.controlnet_cond_embedding.blocks)
    prefix_map.update({"controlnet_cond_embedding.conv_in.": "input_hint_block.0.",
                       "controlnet_cond_embedding.conv_out.": f"input_hint_block.{2 * hint_blocks + 2}.",
                       "controlnet_mid_block.": "middle_block_out.0."})
    for index in range(hint_blocks):
        prefix_map[f"controlnet_cond_embedding.blocks.{index}."] = f"input_hint_block.{2 * index + 2}."
    for index in range(len(controlnet.controlnet_down_blocks)):
        prefix_map[f"controlnet_down_blocks.{index}."] = f"zero_convs.{index}.0."
    out = {}
    for key, value in controlnet.state_dict().items():
        head = max((p for p in prefix_map if key.startswith(p)), key=len)
        rest = key[len(head):]
        if "resnets." in head:
            name, _, tail = rest.partition(".")
            rest = f"{_UNET_RESNET.get(name, name)}.{tail}"
        out[prefix + prefix_map[head] + rest] = value.detach().contiguous().clone()
    return out


def write_tiny_controlnet(path: Path, family: str, seed: int = 0, strength: float = 0.0,
                          layout: str = "original") -> Path:
    """`layout`: "original" (control_model.* keys), "original-v11" (bare keys), "diffusers" (one file) or
    "folder" (`path` is a diffusers folder). .pth/.ckpt files are written with torch.save, as published."""
    controlnet = tiny_controlnet(family, seed, strength)
    if layout == "folder":
        controlnet.save_pretrained(str(path), safe_serialization=True)
        return path
    if layout == "diffusers":
        state = {key: value.detach().contiguous().clone() for key, value in controlnet.state_dict().items()}
    else:
        state = controlnet_to_original(controlnet, prefix="control_model." if layout == "original" else "")
    return write_weights(path, state)


def write_weights(path: Path, state: dict[str, torch.Tensor]) -> Path:
    """`state` as published: .safetensors through safetensors, .pth/.ckpt/.bin through torch.save (a pickle)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, str(path))
    return path
