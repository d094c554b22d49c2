"""Quantized Flux files: fp8 transformers stay in fp8 in memory (counted as such) and compute in the job's dtype,
close to the full-precision model; the model cache reports the bytes fp8 and GGUF models really hold;
bitsandbytes NF4 files are refused with a clear message where CUDA is absent."""
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


def held_bytes(pipeline) -> int:
    """The bytes of every distinct storage the pipeline's modules hold (a GGUF weight: its quantized blocks)."""
    storages = {}
    for component in pipeline.components.values():
        if isinstance(component, torch.nn.Module):
            for tensor in (*component.parameters(), *component.buffers()):
                storage = tensor.data.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def test_model_cache_counts_the_bytes_fp8_and_gguf_models_hold(make_services, tmp_path, flow_files):
    import os

    pytest.importorskip("gguf")
    from tools.tiny_flow_models import tiny_flow_components, write_transformer_gguf

    models = tmp_path / "quantized-models"
    (models / "Stable-diffusion").mkdir(parents=True)
    os.link(flow_files["flux_comfy"], models / "Stable-diffusion" / "flux-full.safetensors")
    write_flux_comfy(models / "Stable-diffusion" / "flux-fp8.safetensors", seed=1, dtype=torch.float8_e4m3fn)
    write_transformer_gguf(models / "Stable-diffusion" / "flux-q8.gguf", "flux", seed=1)
    (models / "text_encoder").symlink_to(flow_files["text_encoder"])
    (models / "VAE").symlink_to(flow_files["VAE"])
    services = make_services(models_dir=models, max_models_in_memory=3)
    reported = {}
    for title in ("flux-full", "flux-fp8", "flux-q8"):
        services.models.select(title)
        with services.models.lease(title) as (entry, model):
            held = held_bytes(model.pipeline)
        reported[title] = next(row["size_bytes"] for row in services.models.cache_report()
                               if row["title"] == entry.title)
        assert reported[title] == held, title
    transformer = sum(p.numel() for p in tiny_flow_components("flux", seed=1)["transformer"].parameters())
    # fp8: one byte a weight instead of four; Q8_0: 34 bytes a 32-value block
    assert reported["flux-full"] - reported["flux-fp8"] > 0.5 * 3 * transformer
    assert reported["flux-full"] - reported["flux-q8"] > 0.5 * 3 * transformer
