"""A tiny CLIP vision image encoder and tiny IP-Adapters shaped for the tiny UNets (tools/tiny_models.py), written
in the published layouts: the encoder with transformers' CLIPVisionModelWithProjection keys (as in
models/clip_vision), the adapter as one file with `image_proj.*` and `ip_adapter.<n>.to_k_ip/to_v_ip` keys
(.safetensors flat, .bin nested as torch.save wrote the originals)."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from tools.tiny_models import tiny_components

TINY_ENCODER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                "image_size": 32, "patch_size": 8, "projection_dim": 16}


def write_tiny_clip_vision(path: Path, seed: int = 0, hidden_size: int = 32, projection_dim: int = 16) -> Path:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = CLIPVisionConfig(**{**TINY_ENCODER, "hidden_size": hidden_size, "projection_dim": projection_dim})
        model = CLIPVisionModelWithProjection(config).eval()
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def tiny_ip_adapter_state(family: str, seed: int = 0, image_width: int = 16, strength: float = 0.5,
                          tokens: int = 4) -> dict[str, torch.Tensor]:
    """A plain IP-Adapter (linear image projection to `tokens` text-width tokens) for the tiny `family` UNet, its
    key/value projections seeded noise of size `strength` so that it changes images."""
    unet = tiny_components(family, 0)["unet"]
    cross = unet.config.cross_attention_dim
    generator = torch.Generator().manual_seed(seed)
    state = {"image_proj.proj.weight": torch.randn(cross * tokens, image_width, generator=generator) * strength,
             "image_proj.proj.bias": torch.zeros(cross * tokens),
             "image_proj.norm.weight": torch.ones(cross), "image_proj.norm.bias": torch.zeros(cross)}
    # the published numbering: every attention layer counted (attn1 even, attn2 odd), only attn2 has weights
    for key_id, name in enumerate(unet.attn_processors):
        if name.endswith("attn2.processor"):
            hidden = unet.get_submodule(name.removesuffix(".processor")).to_q.out_features
            for kind in ("to_k_ip", "to_v_ip"):
                state[f"ip_adapter.{key_id}.{kind}.weight"] = torch.randn(hidden, cross, generator=generator) * strength
    return state


def write_tiny_ip_adapter(path: Path, family: str, seed: int = 0, image_width: int = 16,
                          strength: float = 0.5) -> Path:
    state = tiny_ip_adapter_state(family, seed, image_width, strength)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        nested = {part: {key.removeprefix(part + "."): value for key, value in state.items()
                         if key.startswith(part + ".")} for part in ("image_proj", "ip_adapter")}
        torch.save(nested, path)
    return path
