"""Tiny LoRAs, embeddings and VAEs for the tiny test checkpoints, in the file formats users download."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from backend.models.original_layout import vae_to_original
from tools.tiny_models import tiny_components

UNET_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
TEXT_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")


def _linear_layers(module: torch.nn.Module, targets: tuple[str, ...]) -> dict[str, torch.nn.Linear]:
    return {name: layer for name, layer in module.named_modules()
            if isinstance(layer, torch.nn.Linear) and name.endswith(targets)}


def _low_rank(layer: torch.nn.Linear, generator: torch.Generator, rank: int, scale: float):
    down = torch.randn(rank, layer.in_features, generator=generator) * scale
    up = torch.randn(layer.out_features, rank, generator=generator) * scale
    return down, up


def write_kohya_lora(path: Path, family: str = "sd1", seed: int = 0, rank: int = 4, scale: float = 0.5) -> Path:
    """kohya-ss / A1111 layout: lora_unet_<module>_..., lora_te[1|2]_text_model_..., with .alpha."""
    components = tiny_components(family)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    encoders = [("lora_te", components["text_encoder"])] if family != "sdxl" else [
        ("lora_te1", components["text_encoder"]), ("lora_te2", components["text_encoder_2"])]
    for prefix, encoder in encoders:
        for name, layer in _linear_layers(encoder, TEXT_TARGETS).items():
            name = name if name.startswith("text_model.") else "text_model." + name
            key = f"{prefix}_{name.replace('.', '_')}"
            state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"] = _low_rank(layer, generator, rank,
                                                                                         scale)
            state[f"{key}.alpha"] = torch.tensor(float(rank))
    for name, layer in _linear_layers(components["unet"], UNET_TARGETS).items():
        key = f"lora_unet_{name.replace('.', '_')}"
        state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"] = _low_rank(layer, generator, rank, scale)
        state[f"{key}.alpha"] = torch.tensor(float(rank))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"ss_network_module": "networks.lora", "ss_output_name": path.stem})
    return path


def write_diffusers_lora(path: Path, seed: int = 0, rank: int = 4, scale: float = 0.5) -> Path:
    """diffusers/peft layout for SD1: unet.<module>.lora_A.weight / lora_B.weight."""
    components = tiny_components("sd1")
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, layer in _linear_layers(components["unet"], UNET_TARGETS).items():
        state[f"unet.{name}.lora_A.weight"], state[f"unet.{name}.lora_B.weight"] = _low_rank(layer, generator, rank,
                                                                                            scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def write_embedding(path: Path, width: int = 32, vectors: int = 2, seed: int = 0, scale: float = 1.0) -> Path:
    """An embedding in the format the suffix says: .safetensors (emb_params), .pt (A1111's training output)
    or .bin (diffusers)."""
    data = torch.randn(vectors, width, generator=torch.Generator().manual_seed(seed)) * scale
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({"emb_params": data}, str(path))
    elif path.suffix == ".pt":
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": data}, "name": path.stem,
                    "step": 500, "sd_checkpoint": "0123456789", "sd_checkpoint_name": "tiny"}, str(path))
    else:
        torch.save({f"<{path.stem}>": data[0]}, str(path))
    return path


def write_vae(path: Path, seed: int = 7) -> Path:
    """A tiny VAE in the original (A1111 / LDM) key layout, as VAE files are shared."""
    vae = tiny_components("sd1", seed=seed)["vae"]  # another seed than the checkpoint's: other weights
    state = {key: value.detach().contiguous().clone() for key, value in vae_to_original(vae).items()}
    state = {key.removeprefix("first_stage_model."): value for key, value in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path
