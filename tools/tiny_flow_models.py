"""Tiny Flux.1 and SD3(.5) models of the real architectures (diffusers' FluxTransformer2DModel and
SD3Transformer2DModel, a 16-channel AutoencoderKL, CLIP-L/G and a T5 encoder) with seeded random weights, written
as diffusers folders and as single files in the published layouts:

- Flux, BFL: the transformer alone, original keys without prefix (flux1-dev.safetensors), beside `ae.safetensors`
  (the VAE in the original layout) and text encoders as separate files (clip_l, t5xxl);
- Flux, ComfyUI all-in-one: `model.diffusion_model.*`, `first_stage_model.*` and
  `text_encoders.{clip_l,t5xxl}.transformer.*`, with T5's embedding only as `shared.weight` (as ComfyUI saves it);
- SD3/SD3.5, Stability: `model.diffusion_model.*`, `first_stage_model.*`, `text_encoders.{clip_l,clip_g,t5xxl}.*`.

The T5 tokenizer is a tiny Unigram vocabulary built here (no sentencepiece model, nothing downloaded).
"""
from __future__ import annotations

import string
from pathlib import Path

import torch
from safetensors.torch import save_file

from backend.models.flow_layouts import flux_rows_for_model, sd3_rows_for_model, to_original
from backend.models.original_layout import VAE_PREFIX, classic_clip_state_dict, vae_to_original

CLIP_VOCAB = 49408
T5_WIDTH = 64
CLIP_WIDTH = 32
TINY_VAE_CHANNELS = (32, 32, 64, 64)
# Flux Fill's input: its 2x2-packed latents (64), the packed masked image (64) and the mask at 8x8 per latent
# pixel, packed (256); independent of the width
FILL_IN_CHANNELS = 384
COMMON_WORDS = ("a", "photo", "of", "the", "cat", "dog", "red", "blue", "green", "house", "tree", "sky", "sun",
                "moon", "portrait", "landscape", "painting", "in", "on", "with", "and", "at", "by", "an", "old",
                "young", "man", "woman", "city", "night", "day", "water", "mountain", "flower", "car")


def tiny_t5_tokenizer():
    """A T5 (Unigram) tokenizer with a few hundred pieces: letters, digits, punctuation and common words."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + word, -1.0) for word in COMMON_WORDS]
    pieces += [(char, -3.0) for char in string.ascii_lowercase + string.ascii_uppercase + string.digits]
    pieces += [("▁" + char, -2.5) for char in string.ascii_lowercase]
    pieces += [(char, -3.5) for char in string.punctuation]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512)


def _clip(width: int, projection: bool, act: str = "quick_gelu"):
    """CLIP-L uses quick_gelu, OpenCLIP-G gelu; one head per 64 of width (at least one), as the loader assumes."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=CLIP_VOCAB, hidden_size=width, intermediate_size=width * 2, num_hidden_layers=2,
                            num_attention_heads=max(1, width // 64), max_position_embeddings=77, hidden_act=act,
                            projection_dim=width)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _t5(vocab: int):
    from transformers import T5Config, T5EncoderModel

    # T5 v1.1 (the T5-XXL the pipelines use): gated GELU, untied embeddings
    config = T5Config(vocab_size=vocab, d_model=T5_WIDTH, d_kv=16, d_ff=96, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    return T5EncoderModel(config)


def _vae(scaling: float, shift: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=TINY_VAE_CHANNELS, in_channels=3, out_channels=3, latent_channels=16,
                         down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                         layers_per_block=1, norm_num_groups=32, use_quant_conv=False, use_post_quant_conv=False,
                         scaling_factor=scaling, shift_factor=shift)


def tiny_flow_components(family: str, seed: int = 0, variant: str = "dev") -> dict[str, torch.nn.Module]:
    """Modules of a tiny `family` ("flux" or "sd3") model; `variant` for Flux: "dev" (guidance embedding),
    "schnell", or "fill" (FLUX.1-Fill-dev: dev whose input also takes the masked image and the mask)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _components(family, variant)


def _components(family: str, variant: str) -> dict[str, torch.nn.Module]:
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    vocab = len(tiny_t5_tokenizer())
    if family == "flux":
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=FILL_IN_CHANNELS if variant == "fill" else 64,
            out_channels=64 if variant == "fill" else None, num_layers=1, num_single_layers=2, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=T5_WIDTH, pooled_projection_dim=CLIP_WIDTH,
            guidance_embeds=variant in ("dev", "fill"), axes_dims_rope=(4, 6, 6))
        return {"transformer": transformer, "vae": _vae(0.3611, 0.1159), "text_encoder": _clip(CLIP_WIDTH, False),
                "text_encoder_2": _t5(vocab)}
    if family == "sd3":
        transformer = SD3Transformer2DModel(
            sample_size=32, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=16, num_attention_heads=2,
            joint_attention_dim=T5_WIDTH, caption_projection_dim=32, pooled_projection_dim=2 * CLIP_WIDTH,
            out_channels=16, pos_embed_max_size=32, qk_norm="rms_norm", dual_attention_layers=(0,))
        return {"transformer": transformer, "vae": _vae(1.5305, 0.0609), "text_encoder": _clip(CLIP_WIDTH, True),
                "text_encoder_2": _clip(CLIP_WIDTH, True, "gelu"), "text_encoder_3": _t5(vocab)}
    raise ValueError(f"unknown family {family!r}")


def _scheduler(family: str, variant: str):
    from diffusers import FlowMatchEulerDiscreteScheduler

    if family == "flux" and variant in ("dev", "fill"):
        return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                               base_image_seq_len=256, max_image_seq_len=4096)
    return FlowMatchEulerDiscreteScheduler(shift=1.0 if family == "flux" else 3.0)


def tiny_flow_pipeline(family: str, seed: int = 0, variant: str = "dev"):
    from diffusers import FluxFillPipeline, FluxPipeline, StableDiffusion3Pipeline

    from backend.models.tokenizer import build_clip_tokenizer

    components = tiny_flow_components(family, seed, variant)
    scheduler = _scheduler(family, variant)
    if family == "flux":
        flux_class = FluxFillPipeline if variant == "fill" else FluxPipeline
        return flux_class(**components, scheduler=scheduler, tokenizer=build_clip_tokenizer(),
                          tokenizer_2=tiny_t5_tokenizer())
    return StableDiffusion3Pipeline(**components, scheduler=scheduler, tokenizer=build_clip_tokenizer(),
                                    tokenizer_2=build_clip_tokenizer(pad_token="!"), tokenizer_3=tiny_t5_tokenizer())


def write_tiny_flow_folder(folder: Path, family: str, seed: int = 0, variant: str = "dev") -> Path:
    """A diffusers folder (model_index.json and one subfolder per component)."""
    tiny_flow_pipeline(family, seed, variant).save_pretrained(folder)
    return folder


def _clip_original(encoder) -> dict[str, torch.Tensor]:
    return classic_clip_state_dict(encoder)


def _t5_original(encoder, with_embed_tokens: bool) -> dict[str, torch.Tensor]:
    state = dict(encoder.state_dict())
    if not with_embed_tokens:  # ComfyUI keeps only the shared embedding
        state.pop("encoder.embed_tokens.weight", None)
    return state


def _save(state: dict[str, torch.Tensor], path: Path, dtype: torch.dtype | None = None) -> Path:
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().clone()
             for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def transformer_original_state(family: str, transformer) -> dict[str, torch.Tensor]:
    rows = flux_rows_for_model(transformer) if family == "flux" else sd3_rows_for_model(transformer)
    return to_original(dict(transformer.state_dict()), rows)


def write_flux_bfl(folder: Path, seed: int = 0, variant: str = "dev", dtype: torch.dtype | None = None) -> dict:
    """BFL's release layout: the transformer file, `ae.safetensors`, and the text encoders as separate files
    (clip_l.safetensors in transformers' layout, t5xxl.safetensors in transformers' layout). Returns their paths."""
    parts = tiny_flow_components("flux", seed, variant)
    return {
        "transformer": _save(transformer_original_state("flux", parts["transformer"]),
                             folder / f"flux1-{variant}.safetensors", dtype),
        "vae": _save({k.removeprefix(VAE_PREFIX): v for k, v in vae_to_original(parts["vae"]).items()},
                     folder / "ae.safetensors"),
        "clip_l": _save(_clip_original(parts["text_encoder"]), folder / "clip_l.safetensors"),
        "t5xxl": _save(_t5_original(parts["text_encoder_2"], True), folder / "t5xxl_fp16.safetensors"),
    }


def write_flux_comfy(path: Path, seed: int = 0, variant: str = "dev", dtype: torch.dtype | None = None) -> Path:
    """ComfyUI's all-in-one Flux checkpoint."""
    parts = tiny_flow_components("flux", seed, variant)
    transformer = transformer_original_state("flux", parts["transformer"])
    state = {"model.diffusion_model." + k: v for k, v in transformer.items()}
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    state.update(vae_to_original(parts["vae"]))
    state.update({"text_encoders.clip_l.transformer." + k: v for k, v in _clip_original(parts["text_encoder"]).items()})
    state.update({"text_encoders.t5xxl.transformer." + k: v
                  for k, v in _t5_original(parts["text_encoder_2"], False).items()})
    return _save(state, path)


def write_sd3_single_file(path: Path, seed: int = 0, with_text_encoders: bool = True) -> Path:
    """Stability's SD3/SD3.5 single file (e.g. sd3.5_medium.safetensors / sd3_medium_incl_clips_t5xxlfp16)."""
    parts = tiny_flow_components("sd3", seed)
    transformer = transformer_original_state("sd3", parts["transformer"])
    state = {"model.diffusion_model." + k: v for k, v in transformer.items()}
    state.update(vae_to_original(parts["vae"]))
    if with_text_encoders:
        for name, component in (("clip_l", "text_encoder"), ("clip_g", "text_encoder_2")):
            state.update({f"text_encoders.{name}.transformer." + k: v
                          for k, v in _clip_original(parts[component]).items()})
        state.update({"text_encoders.t5xxl.transformer." + k: v
                      for k, v in _t5_original(parts["text_encoder_3"], True).items()})
    return _save(state, path)


def write_transformer_gguf(path: Path, family: str, seed: int = 0, quantization: str = "Q8_0",
                           variant: str = "dev") -> Path:
    """The transformer alone in the original key layout as a GGUF file, as city96's Flux/SD3 quantizations are:
    2-D weights whose rows split into 32-value blocks in `quantization` ("Q8_0" or "F16"), the rest in F32."""
    import gguf
    import numpy as np

    parts = tiny_flow_components(family, seed, variant)
    state = transformer_original_state(family, parts["transformer"])
    kind = gguf.GGMLQuantizationType[quantization]
    block = gguf.GGML_QUANT_SIZES[kind][0]
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch=family)
    for name, tensor in state.items():
        values = tensor.detach().float().numpy()
        if values.ndim == 2 and values.shape[-1] % block == 0 and kind != gguf.GGMLQuantizationType.F32:
            data = values.astype(np.float16) if kind == gguf.GGMLQuantizationType.F16 else \
                gguf.quants.quantize(values, kind)
            writer.add_tensor(name, data, raw_dtype=kind)
        else:
            writer.add_tensor(name, values.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# transformers' T5 names -> llama.cpp's, as city96's t5xxl GGUFs store them (the reverse of the loader's mapping)
_T5_TO_LLAMA_CPP = (("encoder.final_layer_norm", "enc.output_norm"), ("encoder.block.", "enc.blk."),
                    ("shared", "token_embd"), ("layer.0.SelfAttention.relative_attention_bias", "attn_rel_b"),
                    ("layer.0.SelfAttention.", "attn_"), ("layer.0.layer_norm", "attn_norm"),
                    ("layer.1.DenseReluDense.wi_0", "ffn_gate"), ("layer.1.DenseReluDense.wi_1", "ffn_up"),
                    ("layer.1.DenseReluDense.wo", "ffn_down"), ("layer.1.layer_norm", "ffn_norm"))


def write_t5_gguf(path: Path, family: str = "flux", seed: int = 0, quantization: str = "Q8_0") -> Path:
    """The tiny model's T5 encoder as city96's t5xxl GGUFs are (arch "t5encoder", llama.cpp tensor names, no
    separate encoder.embed_tokens): matrices whose rows split into 32-value blocks in `quantization` ("Q8_0" or
    "F16"), the rest (norms, the relative attention bias) in F32."""
    import gguf
    import numpy as np

    encoder = tiny_flow_components(family, seed)["text_encoder_3" if family == "sd3" else "text_encoder_2"]
    kind = gguf.GGMLQuantizationType[quantization]
    block = gguf.GGML_QUANT_SIZES[kind][0]
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch="t5encoder")
    for name, tensor in _t5_original(encoder, with_embed_tokens=False).items():
        for old, new in _T5_TO_LLAMA_CPP:
            name = name.replace(old, new)
        values = tensor.detach().float().numpy()
        if values.ndim == 2 and values.shape[-1] % block == 0 and "attn_rel_b" not in name:
            data = values.astype(np.float16) if kind == gguf.GGMLQuantizationType.F16 else \
                gguf.quants.quantize(values, kind)
            writer.add_tensor(name, data, raw_dtype=kind)
        else:
            writer.add_tensor(name, values.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_sd3_parts(folder: Path, seed: int = 0) -> dict[str, Path]:
    """The tiny SD3 model's text encoders (Forge's models/text_encoder) and VAE (`sd3_vae.safetensors`, for
    models/VAE) as separate files, for a transformer-only file (a GGUF) to run with."""
    parts = tiny_flow_components("sd3", seed)
    vae = {k.removeprefix(VAE_PREFIX): v for k, v in vae_to_original(parts["vae"]).items()}
    return {"vae": _save(vae, folder / "sd3_vae.safetensors"),
            "clip_l": _save(_clip_original(parts["text_encoder"]), folder / "clip_l.safetensors"),
            "clip_g": _save(_clip_original(parts["text_encoder_2"]), folder / "clip_g.safetensors"),
            "t5xxl": _save(_t5_original(parts["text_encoder_3"], True), folder / "t5xxl_fp16.safetensors")}
