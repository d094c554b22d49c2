"""Quantized Flux files: fp8 transformers stay in fp8 in memory (counted as such) and compute in the job's dtype,
close to the full-precision model; bitsandbytes NF4 files are refused with a clear message where CUDA is absent."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from backend.models.flow_loader import ComponentFolders
from backend.models.loader import CheckpointLoader
from backend.models.weight_files import CheckpointError
from tools.tiny_flow_models import write_flux_comfy


@pytest.fixture(scope="module")
def loader(flow_files):
    return CheckpointLoader(components=ComponentFolders(flow_files["text_encoder"], flow_files["VAE"]))


def image(model, seed: int = 1) -> np.ndarray:
    model.pipeline.set_progress_bar_config(disable=True)
    return model.pipeline("a red cat", height=64, width=64, num_inference_steps=3, max_sequence_length=32,
                          generator=torch.Generator().manual_seed(seed), output_type="np").images[0]


def transformer_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.pipeline.transformer.parameters())


@pytest.mark.parametrize("fp8", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_transformer_kept_in_fp8_and_close_to_full_precision(loader, flow_files, tmp_path, fp8):
    full = loader.load(flow_files["flux_comfy"], torch.float32)
    quantized = loader.load(write_flux_comfy(tmp_path / "flux-fp8.safetensors", seed=1, dtype=fp8), torch.float32)
    linear = quantized.pipeline.transformer.transformer_blocks[0].attn.to_q
    assert linear.weight.dtype == fp8
    assert transformer_bytes(quantized) < 0.5 * transformer_bytes(full)  # norms and the output layer stay wide
    assert full.size_bytes - quantized.size_bytes == transformer_bytes(full) - transformer_bytes(quantized)
    difference = np.abs(image(full) - image(quantized)).mean()
    other_seed = np.abs(image(full) - image(full, seed=2)).mean()
    assert difference < 0.2 * other_seed


def test_nf4_file_refused_with_a_clear_message(loader, flow_files, tmp_path):
    state = load_file(str(flow_files["flux_comfy"]))
    state["model.diffusion_model.double_blocks.0.img_attn.qkv.weight.quant_state.bitsandbytes__nf4"] = \
        torch.zeros(8, dtype=torch.uint8)
    state["model.diffusion_model.double_blocks.0.img_attn.qkv.weight.absmax"] = torch.zeros(4)
    path = tmp_path / "flux1-dev-bnb-nf4.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match="bitsandbytes.*CUDA"):
        loader.load(path, torch.float32)
