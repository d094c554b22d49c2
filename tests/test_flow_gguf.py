"""GGUF Flux/SD3 transformers (city96's layout, as Forge and ComfyUI read them) written here with the gguf package's
writer: found in models/Stable-diffusion and models/unet, sized from the decoded tensor shapes (not FLUX.1's width),
kept quantized in memory, and giving pixels close to the unquantized model's for the same seed; city96's T5-XXL
GGUFs (llama.cpp tensor names) listed as text encoders and loaded close to the unquantized T5."""
from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from backend.core.infotext import parse_infotext
from backend.core.requests import Txt2ImgRequest

pytest.importorskip("gguf")

FAST = dict(steps=2, width=64, height=64, seed=3, sampler_name="Euler", prompt="a red cat")


@pytest.fixture(scope="module")
def gguf_files(tmp_path_factory):
    from tools.tiny_flow_models import write_transformer_gguf

    root = tmp_path_factory.mktemp("gguf")
    return {quantization: write_transformer_gguf(root / f"flux-{quantization}.gguf", "flux", seed=1,
                                                 quantization=quantization) for quantization in ("Q8_0", "F16")}


@pytest.fixture
def gguf_services(make_services, tmp_path, flow_files, gguf_files):
    models = tmp_path / "gguf-models"
    (models / "Stable-diffusion").mkdir(parents=True)
    (models / "unet").mkdir()
    os.link(flow_files["flux_bfl"], models / "Stable-diffusion" / "flux-full.safetensors")
    os.link(gguf_files["Q8_0"], models / "Stable-diffusion" / "flux-q8.gguf")
    os.link(gguf_files["F16"], models / "unet" / "flux-f16.gguf")
    (models / "text_encoder").symlink_to(flow_files["text_encoder"])
    (models / "VAE").symlink_to(flow_files["VAE"])
    return make_services(models_dir=models)


def pixels(services, checkpoint: str) -> np.ndarray:
    job = services.jobs.run_and_wait(Txt2ImgRequest(**FAST, checkpoint=checkpoint), timeout=300)
    assert job.status == "done", job.error
    assert job.result.model_label == "Flux.1"
    return np.asarray(Image.open(io.BytesIO(job.result.images[0].png)).convert("RGB"), dtype=np.int16)


def test_gguf_transformers_are_listed_loaded_quantized_and_close(gguf_services):
    names = {entry.name for entry in gguf_services.models.list_checkpoints()}
    assert {"flux-q8.gguf", "unet/flux-f16.gguf", "flux-full.safetensors"} <= names
    full = pixels(gguf_services, "flux-full")
    f16 = pixels(gguf_services, "flux-f16")
    q8 = pixels(gguf_services, "flux-q8")
    assert np.abs(f16 - full).max() <= 2  # the same weights, rounded to fp16
    assert np.abs(q8 - full).mean() < 0.5 and np.abs(q8 - full).max() <= 3  # 8-bit blocks: close, not equal
    assert np.abs(q8 - f16).max() > 0  # the quantized weights were used, not a full-precision copy
    with gguf_services.models.lease("flux-q8") as (_, model):
        transformer = model.pipeline.transformer
        qkv = transformer.transformer_blocks[0].attn.to_q
        assert type(qkv).__name__ == "GGUFLinear" and qkv.weight.quant_type.name == "Q8_0"
        assert transformer.config.num_attention_heads * transformer.config.attention_head_dim == 32


def test_a_gguf_file_of_another_kind_is_refused_by_name(make_services, models_dir):
    import gguf

    from backend.models.weight_files import CheckpointError

    writer = gguf.GGUFWriter(str(models_dir / "Stable-diffusion" / "llm.gguf"), arch="llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    (models_dir / "Stable-diffusion" / "broken.gguf").write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 8)
    services = make_services()
    with pytest.raises(CheckpointError, match="llm.gguf is a GGUF file but not a Flux or SD3 transformer"):
        services.models.select("llm.gguf")
    with pytest.raises(CheckpointError, match="broken.gguf is not a valid GGUF file"):
        services.models.select("broken.gguf")


def test_sd3_gguf_transformer_runs_close_to_the_single_file(make_services, tmp_path, flow_files):
    from tools.tiny_flow_models import tiny_t5_tokenizer, write_sd3_parts, write_transformer_gguf

    models = tmp_path / "sd3-gguf"
    (models / "Stable-diffusion").mkdir(parents=True)
    os.link(flow_files["sd3"], models / "Stable-diffusion" / "sd3-full.safetensors")
    write_transformer_gguf(models / "unet" / "sd3-q8.gguf", "sd3", seed=2)
    parts = write_sd3_parts(models / "text_encoder", seed=2)
    (models / "VAE").mkdir()
    parts["vae"].rename(models / "VAE" / "sd3_vae.safetensors")
    tiny_t5_tokenizer().save_pretrained(models / "text_encoder" / "t5_tokenizer")
    services = make_services(models_dir=models)
    services.models.choose_components("unet/sd3-q8.gguf", ["sd3_vae.safetensors"])  # SD3 has no default VAE file
    results = {}
    for checkpoint in ("sd3-full", "sd3-q8"):
        job = services.jobs.run_and_wait(Txt2ImgRequest(**FAST, checkpoint=checkpoint, cfg_scale=4.0), timeout=300)
        assert job.status == "done", job.error
        results[checkpoint] = np.asarray(Image.open(io.BytesIO(job.result.images[0].png)).convert("RGB"),
                                         dtype=np.int16)
    difference = np.abs(results["sd3-full"] - results["sd3-q8"])
    assert difference.mean() < 0.5 and difference.max() <= 3


@pytest.fixture
def t5_gguf_models(tmp_path, flow_files):
    """BFL's Flux file with its text encoders, plus city96-style T5 GGUFs (Q8_0, F16) of the same T5 (seed 1)."""
    from tools.tiny_flow_models import write_t5_gguf

    models = tmp_path / "t5-gguf-models"
    (models / "Stable-diffusion").mkdir(parents=True)
    os.link(flow_files["flux_bfl"], models / "Stable-diffusion" / "flux1-dev.safetensors")
    shutil.copytree(flow_files["text_encoder"], models / "text_encoder")
    (models / "VAE").symlink_to(flow_files["VAE"])
    for quantization in ("Q8_0", "F16"):
        write_t5_gguf(models / "text_encoder" / f"t5xxl_{quantization.lower()}.gguf", "flux", seed=1,
                      quantization=quantization)
    return models


def t5_output(services) -> torch.Tensor:
    with services.models.lease("flux1-dev") as (_, model):
        encoder = model.pipeline.text_encoder_2
        tokens = torch.arange(3, 40).remainder(encoder.config.vocab_size).unsqueeze(0)
        with torch.no_grad():
            return encoder(tokens).last_hidden_state.float()


def test_gguf_t5_encoders_are_listed_and_load_close_to_the_full_one(make_services, t5_gguf_models):
    services = make_services(models_dir=t5_gguf_models)
    available = services.models.components.available()
    assert {"t5xxl_q8_0.gguf", "t5xxl_f16.gguf", "t5xxl_fp16.safetensors"} <= set(available)
    full = t5_output(services)  # the default T5 is the safetensors file, before any GGUF
    outputs = {}
    for name in ("t5xxl_f16.gguf", "t5xxl_q8_0.gguf"):
        services.models.choose_components("flux1-dev", [name])
        outputs[name] = t5_output(services)
    scale = full.abs().mean()
    assert (outputs["t5xxl_f16.gguf"] - full).abs().max() < 1e-2 * scale  # fp16-rounded weights
    q8_error = (outputs["t5xxl_q8_0.gguf"] - full).abs().mean()
    assert 0 < q8_error < 2e-2 * scale  # 8-bit blocks: close, and really the quantized file's weights


def test_a_gguf_t5_alone_is_the_default_and_generates(make_services, t5_gguf_models):
    services = make_services(models_dir=t5_gguf_models)
    reference = pixels(services, "flux1-dev")
    (t5_gguf_models / "text_encoder" / "t5xxl_fp16.safetensors").unlink()
    (t5_gguf_models / "text_encoder" / "t5xxl_f16.gguf").unlink()
    # city96's own name for it, without "t5xxl"
    (t5_gguf_models / "text_encoder" / "t5xxl_q8_0.gguf").rename(
        t5_gguf_models / "text_encoder" / "t5-v1_1-xxl-encoder-Q8_0.gguf")
    services = make_services(models_dir=t5_gguf_models)
    job = services.jobs.run_and_wait(Txt2ImgRequest(**FAST, checkpoint="flux1-dev"), timeout=300)
    assert job.status == "done", job.error
    assert "t5-v1_1-xxl-encoder-Q8_0" in parse_infotext(job.result.images[0].infotext).values()
    quantized = np.asarray(Image.open(io.BytesIO(job.result.images[0].png)).convert("RGB"), dtype=np.int16)
    assert np.abs(quantized - reference).mean() < 0.5 and np.abs(quantized - reference).max() <= 3
