"""Small Stable Diffusion-shaped models with seeded random weights, written as real checkpoint files.

They use the real architectures (UNet with cross-attention, AutoencoderKL, CLIP text encoders with the
real tokenizer's vocabulary) at a tiny width, so the built-in demo model and the tests go through the
same loading code as a user's checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from backend.models.detection import SDXL_REFINER_OPENCLIP_PREFIX
from backend.models.original_layout import (
    SD1_CLIP_PREFIX,
    SD2_OPENCLIP_PREFIX,
    SDXL_CLIP_PREFIX,
    SDXL_OPENCLIP_PREFIX,
    clip_to_original,
    open_clip_to_original,
    unet_to_original,
    vae_to_original,
)

TINY_CHANNELS = (32, 64)
TINY_VAE_CHANNELS = (32, 32, 64, 64)  # four levels: 8x downsampling like the real VAE, so sizes mean the same
CLIP_VOCAB = 49408


def _text_config(width: int, projection: int | None = None, act: str = "quick_gelu") -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=CLIP_VOCAB, hidden_size=width, intermediate_size=width * 2, num_hidden_layers=2,
                          num_attention_heads=max(1, width // 64), max_position_embeddings=77, hidden_act=act,
                          projection_dim=projection or width)


def _vae() -> AutoencoderKL:
    return AutoencoderKL(block_out_channels=TINY_VAE_CHANNELS, in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                         layers_per_block=1, norm_num_groups=32)


def tiny_components(family: str, seed: int = 0, inpainting: bool = False) -> dict[str, torch.nn.Module]:
    """Diffusers/transformers modules of a tiny model of `family` ("sd1", "sd2", "sdxl" or "sdxl-refiner")."""
    with torch.random.fork_rng(devices=[]):  # seeded weights without disturbing the caller's RNG
        torch.manual_seed(seed)
        return _tiny_components(family, inpainting)


def _tiny_components(family: str, inpainting: bool) -> dict[str, torch.nn.Module]:
    in_channels = 9 if inpainting else 4
    common = dict(block_out_channels=TINY_CHANNELS, layers_per_block=2, sample_size=32, in_channels=in_channels,
                  out_channels=4, norm_num_groups=32)
    if family == "sd1":
        unet = UNet2DConditionModel(**common, cross_attention_dim=32, attention_head_dim=8,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
        return {"unet": unet, "vae": _vae(), "text_encoder": CLIPTextModel(_text_config(32))}
    if family == "sd2":
        unet = UNet2DConditionModel(**common, cross_attention_dim=64, attention_head_dim=[1, 1],
                                    use_linear_projection=True, upcast_attention=True,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
        return {"unet": unet, "vae": _vae(), "text_encoder": CLIPTextModel(_text_config(64, act="gelu"))}
    if family == "sdxl":
        text_1, text_2 = 32, 64
        unet = UNet2DConditionModel(**common, cross_attention_dim=text_1 + text_2, attention_head_dim=[1, 1],
                                    use_linear_projection=True, transformer_layers_per_block=[1, 2],
                                    addition_embed_type="text_time", addition_time_embed_dim=8,
                                    projection_class_embeddings_input_dim=text_2 + 6 * 8,
                                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
        return {"unet": unet, "vae": _vae(), "text_encoder": CLIPTextModel(_text_config(text_1)),
                "text_encoder_2": CLIPTextModelWithProjection(_text_config(text_2, projection=text_2, act="gelu"))}
    if family == "sdxl-refiner":  # OpenCLIP only; 5 time ids (sizes, crop, aesthetic score)
        text_2 = 64
        unet = UNet2DConditionModel(**common, cross_attention_dim=text_2, attention_head_dim=[1, 1],
                                    use_linear_projection=True, transformer_layers_per_block=[1, 2],
                                    addition_embed_type="text_time", addition_time_embed_dim=8,
                                    projection_class_embeddings_input_dim=text_2 + 5 * 8,
                                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
        return {"unet": unet, "vae": _vae(),
                "text_encoder_2": CLIPTextModelWithProjection(_text_config(text_2, projection=text_2, act="gelu"))}
    raise ValueError(f"unknown family {family!r}")


def to_original_state_dict(family: str, components: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    state = {**unet_to_original(components["unet"]), **vae_to_original(components["vae"])}
    if family == "sd1":
        state.update(clip_to_original(components["text_encoder"], SD1_CLIP_PREFIX))
    elif family == "sd2":
        state.update(open_clip_to_original(components["text_encoder"], SD2_OPENCLIP_PREFIX, extra_final_layer=True))
    elif family == "sdxl-refiner":
        state.update(open_clip_to_original(components["text_encoder_2"], SDXL_REFINER_OPENCLIP_PREFIX,
                                           extra_final_layer=False))
    else:
        state.update(clip_to_original(components["text_encoder"], SDXL_CLIP_PREFIX))
        state.update(open_clip_to_original(components["text_encoder_2"], SDXL_OPENCLIP_PREFIX,
                                           extra_final_layer=False))
    return state


def write_tiny_checkpoint(path: Path, family: str, seed: int = 0, inpainting: bool = False,
                          metadata: dict[str, str] | None = None) -> Path:
    """Write a tiny `family` checkpoint in the original single-file layout (.safetensors, or a pickle
    via torch.save when the name ends in .ckpt)."""
    state = to_original_state_dict(family, tiny_components(family, seed, inpainting))
    state = {key: value.detach().contiguous().clone() for key, value in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, str(path), metadata=metadata)
    else:
        torch.save({"state_dict": state}, str(path))
    return path
