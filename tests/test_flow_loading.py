"""Flux.1 and SD3.5 load through the product from every published layout (BFL + separate parts, ComfyUI all-in-one,
Stability single file, diffusers folders): detected from their keys, sized from their weights, the same pixels for
the same seed whichever layout, text encoders in eval mode with T5's embedding tied."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.models.flow_layouts import flux_rows, sd3_rows, to_diffusers, to_original
from backend.models.flow_loader import ComponentFolders
from backend.models.loader import CheckpointLoader
from backend.models.weight_files import CheckpointError
from tools.tiny_flow_models import tiny_flow_components, transformer_original_state


@pytest.fixture(scope="module")
def loader(flow_files):
    return CheckpointLoader(components=ComponentFolders(flow_files["text_encoder"], flow_files["VAE"]))


def image(model, seed: int = 5) -> np.ndarray:
    extra = {"guidance_scale": 3.5} if model.family == "flux" else {"guidance_scale": 4.0}
    model.pipeline.set_progress_bar_config(disable=True)
    return model.pipeline("a red cat", height=64, width=64, num_inference_steps=2, max_sequence_length=32,
                          generator=torch.Generator().manual_seed(seed), output_type="np", **extra).images[0]


def test_flux_same_pixels_from_bfl_comfy_and_diffusers_layouts(loader, flow_files):
    loaded = {name: loader.load(flow_files[name], torch.float32) for name in ("flux_bfl", "flux_comfy", "flux_folder")}
    assert {model.label for model in loaded.values()} == {"Flux.1"}
    assert type(loaded["flux_bfl"].pipeline).__name__ == "FluxPipeline"
    assert loaded["flux_bfl"].sources == {"transformer": "flux1-dev.safetensors", "vae": "ae.safetensors",
                                          "clip_l": "clip_l.safetensors", "t5xxl": "t5xxl_fp16.safetensors"}
    assert set(loaded["flux_comfy"].sources.values()) == {"flux-comfy.safetensors", "checkpoint"}
    reference = image(loaded["flux_folder"])
    for name in ("flux_bfl", "flux_comfy"):
        assert np.abs(image(loaded[name]) - reference).max() < 1e-4, name
    assert np.abs(image(loaded["flux_bfl"], seed=6) - reference).max() > 1e-3  # the seed matters


def test_sd3_same_pixels_from_stability_file_and_diffusers_folder(loader, flow_files):
    single = loader.load(flow_files["sd3"], torch.float32)
    folder = loader.load(flow_files["sd3_folder"], torch.float32)
    assert single.label == folder.label == "SD3"
    assert type(single.pipeline).__name__ == "StableDiffusion3Pipeline"
    config = single.pipeline.transformer.config
    assert (config.num_layers, config.attention_head_dim, config.dual_attention_layers) == (2, 16, [0])
    assert np.abs(image(single) - image(folder)).max() < 1e-4


def test_text_encoders_in_eval_mode_with_t5_embedding_tied(loader, flow_files):
    """ComfyUI's file holds only T5's shared.weight: the encoder's embedding must be that tensor, not meta, and the
    encoders must not be in training mode (dropout would make every run differ)."""
    pipeline = loader.load(flow_files["flux_comfy"], torch.float32).pipeline
    t5 = pipeline.text_encoder_2
    assert t5.encoder.embed_tokens.weight is t5.shared.weight
    assert not any(p.device.type == "meta" for p in t5.parameters())
    for encoder in (pipeline.text_encoder, t5):
        assert not encoder.training and not any(m.training for m in encoder.modules())
    ids = torch.tensor([[5, 6, 7, 1]])
    with torch.no_grad():
        assert torch.equal(t5(ids).last_hidden_state, t5(ids).last_hidden_state)


def test_model_size_counts_each_tensor_once(loader, flow_files):
    model = loader.load(flow_files["flux_comfy"], torch.float32)
    parameters = {id(p): p for c in model.pipeline.components.values() if isinstance(c, torch.nn.Module)
                  for p in c.parameters()}
    assert model.size_bytes <= sum(p.numel() * 4 for p in parameters.values()) + 1_000_000
    half = loader.load(flow_files["flux_comfy"], torch.float16)
    assert half.size_bytes < model.size_bytes * 0.6


def test_missing_component_is_named(flow_files, tmp_path):
    alone = CheckpointLoader(components=ComponentFolders(tmp_path / "text_encoder", tmp_path / "VAE"))
    with pytest.raises(CheckpointError, match=r"no VAE .*ae\.safetensors"):
        alone.load(flow_files["flux_bfl"], torch.float32)
    with pytest.raises(CheckpointError, match=r"no CLIP-L text encoder .*clip_l"):
        alone.load(flow_files["flux_bfl"], torch.float32, components={"vae": flow_files["VAE"] / "ae.safetensors"})


def test_missing_t5_tokenizer_is_named(flow_files, tmp_path):
    alone = CheckpointLoader(components=ComponentFolders(tmp_path / "text_encoder", tmp_path / "VAE"))
    with pytest.raises(CheckpointError, match=r"no T5 tokenizer found.*t5_tokenizer"):
        alone.load(flow_files["sd3"], torch.float32)


def test_sd3_table_matches_diffusers_converter():
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    transformer = tiny_flow_components("sd3", seed=3)["transformer"]
    original = transformer_original_state("sd3", transformer)
    theirs = convert_sd3_transformer_checkpoint_to_diffusers(dict(original))
    ours = to_diffusers(original, sd3_rows(original.keys()),
                        {k: tuple(v.shape) for k, v in transformer.state_dict().items()})
    assert theirs.keys() == ours.keys()
    assert all(torch.equal(theirs[key], ours[key]) for key in ours)


def test_flux_table_matches_diffusers_converter_at_flux1_width():
    """diffusers' converter only works at FLUX.1's own width (3072): compare names and shapes there, on meta tensors."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    with init_empty_weights():
        transformer = FluxTransformer2DModel(num_layers=1, num_single_layers=1, guidance_embeds=True)
    state = transformer.state_dict()
    original = to_original(dict(state), flux_rows({"double_blocks.0.", "single_blocks.0.",
                                                   "guidance_in.in_layer.weight"}))
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(original))
    ours = to_diffusers(original, flux_rows(original.keys()), {k: tuple(v.shape) for k, v in state.items()})
    assert {k: tuple(v.shape) for k, v in theirs.items()} == {k: tuple(v.shape) for k, v in ours.items()}


def test_tiny_flux_width_loads_where_diffusers_converter_fails(flow_files):
    """The trap diffusers 0.42 has: its converter assumes 3072 wide blocks."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers
    from safetensors.torch import load_file

    with pytest.raises(Exception):  # noqa: B017 (torch.split's own error type)
        convert_flux_transformer_checkpoint_to_diffusers(load_file(str(flow_files["flux_bfl"])))


def test_flow_models_take_bf16_where_auto_would_give_fp16(flow_files, checkpoint_files):
    """--precision auto on a GPU gives fp16, in which Flux's and SD3's T5 and transformer overflow: they are loaded
    in bf16 instead (where the GPU has it); SD checkpoints and a precision the user chose keep theirs."""
    from backend.models.devices import choose_flow_dtype

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert choose_flow_dtype("auto", cuda, torch.float16, bf16_supported=True) == torch.bfloat16
    assert choose_flow_dtype("auto", cuda, torch.float16, bf16_supported=False) == torch.float16
    assert choose_flow_dtype("fp16", cuda, torch.float16, bf16_supported=True) == torch.float16
    assert choose_flow_dtype("auto", cpu, torch.float32) == torch.float32
    loader = CheckpointLoader(components=ComponentFolders(flow_files["text_encoder"], flow_files["VAE"]),
                              flow_dtype=torch.bfloat16)
    for name in ("flux_bfl", "flux_folder", "sd3"):
        pipeline = loader.load(flow_files[name], torch.float32).pipeline
        assert pipeline.transformer.dtype == torch.bfloat16 and pipeline.vae.dtype == torch.bfloat16, name
        assert pipeline.text_encoder_2.dtype == torch.bfloat16, name
    assert loader.load(checkpoint_files["sd1"], torch.float32).pipeline.unet.dtype == torch.float32
