"""Write diffusers models in the original Stable Diffusion checkpoint key layout (the one A1111 users have).

Loading goes the other way through diffusers' own converters (see checkpoint_loader.py); this direction
exists so the built-in model and the tests produce real single-file checkpoints that exercise that path.
"""
from __future__ import annotations

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_CLIP_PREFIX = "cond_stage_model.transformer."
SD2_OPENCLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."

_UNET_TOP_LEVEL = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
                "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}


def _unet_prefix_map(config) -> dict[str, str]:
    """diffusers module prefix -> original prefix, for any depth/width of the SD UNet family."""
    layers = config["layers_per_block"]
    levels = len(config["block_out_channels"])
    mapping: dict[str, str] = {}
    for level in range(levels):
        for j in range(layers):
            block = (layers + 1) * level + j + 1
            mapping[f"down_blocks.{level}.resnets.{j}."] = f"input_blocks.{block}.0."
            mapping[f"down_blocks.{level}.attentions.{j}."] = f"input_blocks.{block}.1."
        if level < levels - 1:
            mapping[f"down_blocks.{level}.downsamplers.0.conv."] = f"input_blocks.{(layers + 1) * (level + 1)}.0.op."
        up_has_attention = "CrossAttn" in config["up_block_types"][level]
        for j in range(layers + 1):
            block = (layers + 1) * level + j
            mapping[f"up_blocks.{level}.resnets.{j}."] = f"output_blocks.{block}.0."
            mapping[f"up_blocks.{level}.attentions.{j}."] = f"output_blocks.{block}.1."
        if level < levels - 1:
            index = 2 if up_has_attention else 1
            mapping[f"up_blocks.{level}.upsamplers.0."] = f"output_blocks.{(layers + 1) * level + layers}.{index}."
    mapping["mid_block.attentions.0."] = "middle_block.1."
    mapping["mid_block.resnets.0."] = "middle_block.0."
    mapping["mid_block.resnets.1."] = "middle_block.2."
    mapping.update(_UNET_TOP_LEVEL)
    return mapping


def unet_to_original(unet) -> dict[str, torch.Tensor]:
    prefix_map = _unet_prefix_map(unet.config)
    out = {}
    for key, value in unet.state_dict().items():
        prefix = max((p for p in prefix_map if key.startswith(p)), key=len)
        rest = key[len(prefix):]
        if "resnets." in prefix:
            name, _, tail = rest.partition(".")
            rest = f"{_UNET_RESNET.get(name, name)}.{tail}"
        out[UNET_PREFIX + prefix_map[prefix] + rest] = value
    return out


def vae_to_original(vae) -> dict[str, torch.Tensor]:
    levels = len(vae.config.block_out_channels)
    prefix_map = {"mid_block.attentions.0.": "mid.attn_1.",
                  "mid_block.resnets.0.": "mid.block_1.", "mid_block.resnets.1.": "mid.block_2.",
                  "conv_norm_out.": "norm_out."}
    for level in range(levels):
        prefix_map[f"down_blocks.{level}.resnets."] = f"down.{level}.block."
        prefix_map[f"down_blocks.{level}.downsamplers.0."] = f"down.{level}.downsample."
        prefix_map[f"up_blocks.{level}.resnets."] = f"up.{levels - 1 - level}.block."
        prefix_map[f"up_blocks.{level}.upsamplers.0."] = f"up.{levels - 1 - level}.upsample."
    attention_names = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}
    out = {}
    for key, value in vae.state_dict().items():
        part, _, rest = key.partition(".")
        if part not in ("encoder", "decoder"):
            out[VAE_PREFIX + key] = value
            continue
        prefix = max((p for p in prefix_map if rest.startswith(p)), key=len, default="")
        tail = rest[len(prefix):]
        if prefix == "mid_block.attentions.0.":
            for new, old in attention_names.items():
                if tail.startswith(new):
                    tail = old + tail[len(new):]
            if tail.endswith("weight") and value.ndim == 2:
                value = value[:, :, None, None]  # the original attention uses 1x1 convolutions
        tail = tail.replace("conv_shortcut", "nin_shortcut")
        out[f"{VAE_PREFIX}{part}.{prefix_map.get(prefix, prefix)}{tail}"] = value
    return out


def classic_clip_state_dict(text_encoder) -> dict[str, torch.Tensor]:
    """The text encoder's weights under the classic transformers names ("text_model.*").

    transformers 5 dropped the "text_model." level from CLIPTextModel; checkpoints still carry it.
    """
    return {key if key.startswith(("text_model.", "text_projection.")) else "text_model." + key: value
            for key, value in text_encoder.state_dict().items()}


def clip_to_original(text_encoder, prefix: str) -> dict[str, torch.Tensor]:
    """OpenAI CLIP text encoders keep the classic transformers layout in original checkpoints."""
    return {prefix + key: value for key, value in classic_clip_state_dict(text_encoder).items()}


def open_clip_to_original(text_encoder, prefix: str, extra_final_layer: bool) -> dict[str, torch.Tensor]:
    """OpenCLIP layout: fused qkv projections, resblocks, text_projection stored transposed.

    SD2's original text model has one more resblock than diffusers keeps (SD2 uses the penultimate
    layer), so `extra_final_layer` writes a copy of the last layer as that unused block.
    """
    state = classic_clip_state_dict(text_encoder)
    out = {
        prefix + "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
        prefix + "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
        prefix + "ln_final.weight": state["text_model.final_layer_norm.weight"],
        prefix + "ln_final.bias": state["text_model.final_layer_norm.bias"],
    }
    if "text_projection.weight" in state:
        out[prefix + "text_projection"] = state["text_projection.weight"].T.contiguous()
    layer_count = text_encoder.config.num_hidden_layers
    for index in range(layer_count + (1 if extra_final_layer else 0)):
        source = f"text_model.encoder.layers.{min(index, layer_count - 1)}."
        target = f"{prefix}transformer.resblocks.{index}."
        for kind in ("weight", "bias"):
            out[target + f"attn.in_proj_{kind}"] = torch.cat(
                [state[source + f"self_attn.{p}_proj.{kind}"] for p in "qkv"], dim=0)
            out[target + f"attn.out_proj.{kind}"] = state[source + f"self_attn.out_proj.{kind}"]
            out[target + f"ln_1.{kind}"] = state[source + f"layer_norm1.{kind}"]
            out[target + f"ln_2.{kind}"] = state[source + f"layer_norm2.{kind}"]
            out[target + f"mlp.c_fc.{kind}"] = state[source + f"mlp.fc1.{kind}"]
            out[target + f"mlp.c_proj.{kind}"] = state[source + f"mlp.fc2.{kind}"]
    return out
