"""Tell which Stable Diffusion family a single-file checkpoint belongs to, and derive its diffusers configs.

Configs start from the ones shipped in configs/ and take every shape-dependent value from the
weights themselves, so fine-tunes, pruned files and the small test models load through one path.
"""
from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from backend.core.model_family import FAMILY_LABELS, ModelFamily
from backend.models.original_layout import (
    SD1_CLIP_PREFIX,
    SD2_OPENCLIP_PREFIX,
    SDXL_CLIP_PREFIX,
    SDXL_OPENCLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
)
from backend.models.weight_files import CheckpointError

CONFIG_ROOT = Path(__file__).parent / "configs"
SDXL_REFINER_OPENCLIP_PREFIX = "conditioner.embedders.0.model."


@dataclass(frozen=True)
class DetectedModel:
    family: ModelFamily  # a key of FAMILY_LABELS
    inpainting: bool
    configs: dict  # component name -> diffusers/transformers config dict

    @property
    def label(self) -> str:
        return FAMILY_LABELS[self.family] + (" inpainting" if self.inpainting else "")


@cache
def _base_config(family: ModelFamily, component: str) -> str:
    return (CONFIG_ROOT / family / component / "config.json").read_text()


def base_config(family: ModelFamily, component: str) -> dict:
    return json.loads(_base_config(family, component))


def detect_family(state: dict[str, torch.Tensor]) -> str:
    if not any(key.startswith(UNET_PREFIX) for key in state):
        raise CheckpointError(
            "this file has no Stable Diffusion UNet weights (model.diffusion_model.*); it may be a LoRA, VAE, "
            "embedding or upscaler - put it in the matching models folder")
    if SDXL_OPENCLIP_PREFIX + "ln_final.weight" in state:
        return "sdxl"
    if SDXL_REFINER_OPENCLIP_PREFIX + "ln_final.weight" in state:
        return "sdxl-refiner"
    if SD2_OPENCLIP_PREFIX + "ln_final.weight" in state:
        return "sd2"
    if any(key.startswith(SD1_CLIP_PREFIX) for key in state):
        return "sd1"
    raise CheckpointError("this checkpoint has no text encoder weights; UNet-only files are not supported")


def _indices(state, pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for key in state if (m := regex.match(key))})


def infer_unet_config(state: dict[str, torch.Tensor], family: ModelFamily) -> dict:
    p = UNET_PREFIX
    config = base_config(family, "unet")
    conv_in = state[p + "input_blocks.0.0.weight"]
    levels: list[dict] = [{"channels": [], "depth": 0}]
    for block in _indices(state, re.escape(p) + r"input_blocks\.(\d+)\.")[1:]:
        if p + f"input_blocks.{block}.0.op.weight" in state:
            levels.append({"channels": [], "depth": 0})
            continue
        level = levels[-1]
        level["channels"].append(state[p + f"input_blocks.{block}.0.out_layers.3.weight"].shape[0])
        depth = len(_indices(state, re.escape(p + f"input_blocks.{block}.1.transformer_blocks.") + r"(\d+)\."))
        level["depth"] = max(level["depth"], depth)
    channels = [level["channels"][-1] for level in levels]
    attn2 = next(v for k, v in state.items() if k.startswith(p) and k.endswith("attn2.to_k.weight"))
    proj_in = next(v for k, v in state.items() if k.startswith(p) and k.endswith(".proj_in.weight"))
    down_types = ["CrossAttnDownBlock2D" if level["depth"] else "DownBlock2D" for level in levels]
    up_types = [t.replace("Down", "Up") for t in reversed(down_types)]
    depths = [level["depth"] or 1 for level in levels]
    if channels != config["block_out_channels"]:
        # Head counts are not visible in the weights; keep the family's rule (SD1: 8 heads, else 64-wide heads).
        config["attention_head_dim"] = 8 if family == "sd1" else [max(1, c // 64) for c in channels]
    config.update(
        in_channels=conv_in.shape[1], out_channels=state[p + "out.2.weight"].shape[0],
        block_out_channels=channels, layers_per_block=len(levels[0]["channels"]),
        down_block_types=down_types, up_block_types=up_types,
        cross_attention_dim=attn2.shape[1], use_linear_projection=proj_in.ndim == 2,
    )
    if family.startswith("sdxl"):
        config["transformer_layers_per_block"] = depths if len(set(depths)) > 1 else depths[0]
        config["projection_class_embeddings_input_dim"] = state[p + "label_emb.0.0.weight"].shape[1]
    return config


def infer_vae_config(state: dict[str, torch.Tensor], family: ModelFamily) -> dict:
    p = VAE_PREFIX
    config = base_config(family, "vae")
    levels = _indices(state, re.escape(p + "encoder.down.") + r"(\d+)\.")
    channels = [state[p + f"encoder.down.{i}.block.0.conv2.weight"].shape[0] for i in levels]
    config.update(
        in_channels=state[p + "encoder.conv_in.weight"].shape[1],
        out_channels=state[p + "decoder.conv_out.weight"].shape[0],
        block_out_channels=channels,
        layers_per_block=len(_indices(state, re.escape(p + "encoder.down.0.block.") + r"(\d+)\.")),
        latent_channels=state[p + "post_quant_conv.weight"].shape[0],
        down_block_types=["DownEncoderBlock2D"] * len(channels), up_block_types=["UpDecoderBlock2D"] * len(channels),
    )
    return config


def _text_config(family: ModelFamily, component: str, vocab_and_width, positions: int, layers: int, intermediate: int,
                 projection: int | None) -> dict:
    config = base_config(family, component)
    vocab, width = vocab_and_width
    if width != config["hidden_size"]:
        config["num_attention_heads"] = max(1, width // 64)
    config.update(vocab_size=vocab, hidden_size=width, max_position_embeddings=positions,
                  num_hidden_layers=layers, intermediate_size=intermediate)
    if projection is not None:
        config["projection_dim"] = projection
    return config


def infer_clip_config(state, prefix: str, family: ModelFamily, component: str) -> dict:
    # Some early SD1 files lack the "text_model." level.
    base = prefix + "text_model." if prefix + "text_model.embeddings.token_embedding.weight" in state else prefix
    layers = _indices(state, re.escape(base + "encoder.layers.") + r"(\d+)\.")
    return _text_config(
        family, component, tuple(state[base + "embeddings.token_embedding.weight"].shape),
        state[base + "embeddings.position_embedding.weight"].shape[0], len(layers),
        state[base + "encoder.layers.0.mlp.fc1.weight"].shape[0], None)


def infer_open_clip_config(state, prefix: str, family: ModelFamily, component: str) -> dict:
    blocks = _indices(state, re.escape(prefix + "transformer.resblocks.") + r"(\d+)\.")
    # SD2 conditions on the penultimate layer, so its text model ends one block early (as diffusers' config does).
    layers = len(blocks) - 1 if family == "sd2" else len(blocks)
    projection = state.get(prefix + "text_projection")
    return _text_config(
        family, component, tuple(state[prefix + "token_embedding.weight"].shape),
        state[prefix + "positional_embedding"].shape[0], layers,
        state[prefix + "transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        None if projection is None else projection.shape[1])


def detect(state: dict[str, torch.Tensor]) -> DetectedModel:
    family = detect_family(state)
    configs = {"unet": infer_unet_config(state, family), "vae": infer_vae_config(state, family),
               "scheduler": base_config(family, "scheduler")}
    if family == "sd1":
        configs["text_encoder"] = infer_clip_config(state, SD1_CLIP_PREFIX, family, "text_encoder")
    elif family == "sd2":
        configs["text_encoder"] = infer_open_clip_config(state, SD2_OPENCLIP_PREFIX, family, "text_encoder")
    elif family == "sdxl":
        configs["text_encoder"] = infer_clip_config(state, SDXL_CLIP_PREFIX, family, "text_encoder")
        configs["text_encoder_2"] = infer_open_clip_config(state, SDXL_OPENCLIP_PREFIX, family, "text_encoder_2")
    else:
        configs["text_encoder_2"] = infer_open_clip_config(
            state, SDXL_REFINER_OPENCLIP_PREFIX, family, "text_encoder_2")
    if family.startswith("sdxl"):
        # The added "time ids" are 6 numbers for the base model (sizes, crop, target) and 5 for the refiner.
        time_ids = 6 if family == "sdxl" else 5
        pooled = configs["text_encoder_2"]["projection_dim"]
        configs["unet"]["addition_time_embed_dim"] = (
            configs["unet"]["projection_class_embeddings_input_dim"] - pooled) // time_ids
    in_channels = configs["unet"]["in_channels"]
    if in_channels not in (4, 9):
        raise CheckpointError(f"UNet with {in_channels} input channels (e.g. instruct-pix2pix) is not supported")
    return DetectedModel(family=family, inpainting=in_channels == 9, configs=copy.deepcopy(configs))
