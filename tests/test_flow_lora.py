"""LoRAs for Flux.1 and SD3.5 in diffusers' layout (what diffusers reads from kohya, ai-toolkit and xlabs files too):
applied for the job, weight 0 gives the base image exactly, removed afterwards; a LoRA for another family is a
warning."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from backend.core.requests import Txt2ImgRequest
from tests.tiny_networks import write_kohya_lora
from tools.tiny_flow_models import tiny_flow_components

REQUEST = dict(steps=3, width=64, height=64, seed=9, sampler_name="Euler")


def write_flow_lora(path, family: str, rank: int = 4, scale: float = 2.0):
    """peft layout: transformer.<module>.lora_A/lora_B for the attention projections of every block."""
    transformer = tiny_flow_components(family, seed=1)["transformer"]
    generator = torch.Generator().manual_seed(3)
    state = {}
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(("attn.to_q", "attn.to_k", "attn.to_v")):
            state[f"transformer.{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=generator)
            state[f"transformer.{name}.lora_B.weight"] = torch.randn(module.out_features, rank,
                                                                     generator=generator) * scale
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


@pytest.fixture
def flow_services(make_services, tmp_path, flow_files):
    models = tmp_path / "lora-models"
    (models / "Stable-diffusion").mkdir(parents=True)
    os.link(flow_files["flux_comfy"], models / "Stable-diffusion" / "flux-tiny.safetensors")
    os.link(flow_files["sd3"], models / "Stable-diffusion" / "sd3-tiny.safetensors")
    (models / "text_encoder").symlink_to(flow_files["text_encoder"])
    write_flow_lora(models / "Lora" / "flux-style.safetensors", "flux")
    write_flow_lora(models / "Lora" / "sd3-style.safetensors", "sd3")
    write_kohya_lora(models / "Lora" / "sd1-style.safetensors", "sd1")
    return make_services(models_dir=models)


def png(services, **fields):
    job = services.jobs.run_and_wait(Txt2ImgRequest(**{**REQUEST, **fields}), timeout=300)
    assert job.status == "done", job.error
    return job.result


def pixels_of(result) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(result.images[0].png)).convert("RGB"))


@pytest.mark.parametrize("checkpoint,lora", [("flux-tiny", "flux-style"), ("sd3-tiny", "sd3-style")])
def test_lora_changes_the_image_and_weight_zero_restores_it(flow_services, checkpoint, lora):
    base = pixels_of(png(flow_services, checkpoint=checkpoint, prompt="a cat"))
    styled = png(flow_services, checkpoint=checkpoint, prompt=f"a cat <lora:{lora}:1>")
    assert not styled.warnings and np.abs(pixels_of(styled).astype(int) - base).max() > 5
    assert "Lora hashes" in styled.images[0].infotext
    assert np.array_equal(pixels_of(png(flow_services, checkpoint=checkpoint, prompt=f"a cat <lora:{lora}:0>")), base)
    assert np.array_equal(pixels_of(png(flow_services, checkpoint=checkpoint, prompt="a cat")), base)  # removed


def test_lora_for_another_family_is_a_warning(flow_services):
    result = png(flow_services, checkpoint="flux-tiny", prompt="a cat <lora:sd1-style:1>")
    assert any("made for SD1.x/SD2.x, this model is Flux.1" in warning for warning in result.warnings)
