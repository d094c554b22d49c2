"""Tell a Flux.1 or SD3/SD3.5 single file from its keys and derive every component's config from the weights.

Configs start from the ones shipped in configs/flux and configs/sd3 (the released models') and take every size the
weights show, so tiny test models, pruned files and other widths load through the same path.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from backend.models.detection import base_config
from backend.models.weight_files import CheckpointError

TRANSFORMER_PREFIXES = ("model.diffusion_model.", "")
FLUX_MARKER = "double_blocks.0.img_attn.qkv.weight"
SD3_MARKER = "joint_blocks.0.x_block.attn.qkv.weight"
VAE_PREFIXES = ("first_stage_model.", "vae.")
TEXT_ENCODER_PREFIX = "text_encoders.{name}.transformer."
# Which text encoders each family needs, by the names Forge/ComfyUI files use, and their pipeline component
TEXT_ENCODERS = {"flux": {"clip_l": "text_encoder", "t5xxl": "text_encoder_2"},
                 "sd3": {"clip_l": "text_encoder", "clip_g": "text_encoder_2", "t5xxl": "text_encoder_3"}}


@dataclass(frozen=True)
class FlowFile:
    family: str  # "flux" | "sd3"
    prefix: str  # before the transformer's original keys ("model.diffusion_model." or "")


def flow_file(state: dict[str, torch.Tensor]) -> FlowFile | None:
    """The family and transformer key prefix of a Flux/SD3 file, or None for any other file."""
    for prefix in TRANSFORMER_PREFIXES:
        if prefix + FLUX_MARKER in state:
            return FlowFile("flux", prefix)
        if prefix + SD3_MARKER in state:
            return FlowFile("sd3", prefix)
    return None


def _indices(keys, pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for key in keys if (m := regex.match(key))})


def rope_axes(head_dim: int) -> list[int]:
    """Flux splits each head's rotary dimensions over (index, height, width): (16, 56, 56) for its 128-wide heads.
    The split is not in the weights; other widths keep the proportions, every part even."""
    side = max(2, (head_dim - head_dim // 8) // 2 // 2 * 2)
    return [head_dim - 2 * side, side, side]


def flux_transformer_config(state: dict[str, torch.Tensor]) -> dict:
    """`state`: the transformer's original tensors without prefix."""
    config = base_config("flux", "transformer")
    image_in = state["img_in.weight"]
    head_dim = state["double_blocks.0.img_attn.norm.query_norm.scale"].shape[0]
    config.update(
        in_channels=image_in.shape[1], out_channels=state["final_layer.linear.weight"].shape[0],
        num_layers=len(_indices(state, r"double_blocks\.(\d+)\.")),
        num_single_layers=len(_indices(state, r"single_blocks\.(\d+)\.")),
        attention_head_dim=head_dim, num_attention_heads=image_in.shape[0] // head_dim,
        joint_attention_dim=state["txt_in.weight"].shape[1],
        pooled_projection_dim=state["vector_in.in_layer.weight"].shape[1],
        guidance_embeds="guidance_in.in_layer.weight" in state)
    if head_dim != 128:
        config["axes_dims_rope"] = rope_axes(head_dim)
    return config


def is_flux_fill(transformer_config) -> bool:
    """FLUX.1-Fill: its input takes the masked image and the mask besides the latents (x_embedder 384 wide, its
    output 64), so it only inpaints."""
    out_channels = transformer_config.get("out_channels") or transformer_config["in_channels"]
    return transformer_config["in_channels"] != out_channels


def sd3_transformer_config(state: dict[str, torch.Tensor]) -> dict:
    config = base_config("sd3", "transformer")
    patch = state["x_embedder.proj.weight"]
    inner, in_channels, patch_size = patch.shape[0], patch.shape[1], patch.shape[2]
    blocks = _indices(state, r"joint_blocks\.(\d+)\.")
    qk_norm = "joint_blocks.0.x_block.attn.ln_q.weight" in state
    head_dim = state["joint_blocks.0.x_block.attn.ln_q.weight"].shape[0] if qk_norm else 64  # SD3 medium: 64
    context = state["context_embedder.weight"]
    config.update(
        in_channels=in_channels, patch_size=patch_size, num_layers=len(blocks), attention_head_dim=head_dim,
        num_attention_heads=inner // head_dim, joint_attention_dim=context.shape[1],
        caption_projection_dim=context.shape[0], pooled_projection_dim=state["y_embedder.mlp.0.weight"].shape[1],
        out_channels=state["final_layer.linear.weight"].shape[0] // (patch_size * patch_size),
        pos_embed_max_size=round(state["pos_embed"].shape[1] ** 0.5), qk_norm="rms_norm" if qk_norm else None,
        dual_attention_layers=[i for i in blocks if f"joint_blocks.{i}.x_block.attn2.qkv.weight" in state])
    return config


def t5_config(state: dict[str, torch.Tensor], family: str, component: str) -> dict:
    """`state`: a T5 encoder's tensors in transformers' layout."""
    config = base_config(family, component)
    vocab, width = state["shared.weight"].shape
    bias = state["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    heads = bias.shape[1]
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in state
    feed_forward = state["encoder.block.0.layer.1.DenseReluDense." + ("wi_0" if gated else "wi") + ".weight"]
    config.update(
        vocab_size=vocab, d_model=width, num_heads=heads, relative_attention_num_buckets=bias.shape[0],
        d_kv=state["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0] // heads, d_ff=feed_forward.shape[0],
        num_layers=len(_indices(state, r"encoder\.block\.(\d+)\.")),
        feed_forward_proj="gated-gelu" if gated else "relu", is_gated_act=gated)
    return config


def clip_config(state: dict[str, torch.Tensor], family: str, component: str) -> dict:
    """`state`: a CLIP text encoder's tensors in transformers' classic layout ("text_model.*")."""
    config = base_config(family, component)
    vocab, width = state["text_model.embeddings.token_embedding.weight"].shape
    if width != config["hidden_size"]:
        config["num_attention_heads"] = max(1, width // 64)  # head counts are not in the weights
    config.update(vocab_size=vocab, hidden_size=width,
                  max_position_embeddings=state["text_model.embeddings.position_embedding.weight"].shape[0],
                  num_hidden_layers=len(_indices(state, r"text_model\.encoder\.layers\.(\d+)\.")),
                  intermediate_size=state["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0])
    if "text_projection.weight" in state:
        config["projection_dim"] = state["text_projection.weight"].shape[0]
    return config


def flow_vae_config(state: dict[str, torch.Tensor], family: str) -> dict:
    """`state`: the VAE's tensors in the original (LDM) layout without prefix."""
    config = base_config(family, "vae")
    levels = _indices(state, r"encoder\.down\.(\d+)\.")
    channels = [state[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] for i in levels]
    config.update(
        block_out_channels=channels, latent_channels=state["encoder.conv_out.weight"].shape[0] // 2,
        layers_per_block=len(_indices(state, r"encoder\.down\.0\.block\.(\d+)\.")),
        down_block_types=["DownEncoderBlock2D"] * len(channels), up_block_types=["UpDecoderBlock2D"] * len(channels),
        use_quant_conv="quant_conv.weight" in state, use_post_quant_conv="post_quant_conv.weight" in state)
    return config


def sub_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def vae_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The VAE tensors a checkpoint holds, without prefix (empty when it has none)."""
    for prefix in VAE_PREFIXES:
        found = sub_state(state, prefix)
        if found:
            return found
    return {}


def require(condition: bool, message: str):
    if not condition:
        raise CheckpointError(message)
