"""The published single-file key layouts of the flow-matching transformers (Flux.1 as BFL and ComfyUI write it,
SD3/SD3.5 as Stability writes it), as one table per model read in both directions.

Each row names one original tensor and the diffusers tensors it holds: copied, concatenated along the first axis
(fused qkv projections; Flux's single blocks also fuse the MLP input), or with its two halves swapped (the original
AdaLayerNormContinuous orders shift, scale; diffusers scale, shift). Reading splits a fused tensor by the shapes of
the model built from the config the weights imply, so no width is assumed (diffusers 0.42's Flux converter
hardcodes FLUX.1's 3072). The same table writes the test models' files, so the two directions cannot drift.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

COPY, CONCAT, SWAP = "copy", "concat", "swap"


@dataclass(frozen=True)
class Row:
    original: str
    diffusers: tuple[str, ...]
    kind: str = COPY


def _linear(original: str, diffusers: str, kind: str = COPY, bias: bool = True) -> list[Row]:
    suffixes = ("weight", "bias") if bias else ("weight",)
    return [Row(f"{original}.{s}", (f"{diffusers}.{s}",) if kind != CONCAT else
                tuple(f"{d}.{s}" for d in diffusers.split("|")), kind) for s in suffixes]


def _count(keys, pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for key in keys if (m := regex.match(key))})


def flux_rows(keys) -> list[Row]:
    """Rows for a Flux transformer whose original keys (without prefix) are `keys`."""
    rows = _linear("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1")
    rows += _linear("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2")
    rows += _linear("vector_in.in_layer", "time_text_embed.text_embedder.linear_1")
    rows += _linear("vector_in.out_layer", "time_text_embed.text_embedder.linear_2")
    if "guidance_in.in_layer.weight" in keys:  # Flux dev: guidance distilled into an embedding
        rows += _linear("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1")
        rows += _linear("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2")
    rows += _linear("txt_in", "context_embedder") + _linear("img_in", "x_embedder")
    for i in _count(keys, r"double_blocks\.(\d+)\."):
        o, d = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        rows += _linear(o + "img_mod.lin", d + "norm1.linear") + _linear(o + "txt_mod.lin", d + "norm1_context.linear")
        rows += _linear(o + "img_attn.qkv", f"{d}attn.to_q|{d}attn.to_k|{d}attn.to_v", CONCAT)
        rows += _linear(o + "txt_attn.qkv", f"{d}attn.add_q_proj|{d}attn.add_k_proj|{d}attn.add_v_proj", CONCAT)
        rows += [Row(o + "img_attn.norm.query_norm.scale", (d + "attn.norm_q.weight",)),
                 Row(o + "img_attn.norm.key_norm.scale", (d + "attn.norm_k.weight",)),
                 Row(o + "txt_attn.norm.query_norm.scale", (d + "attn.norm_added_q.weight",)),
                 Row(o + "txt_attn.norm.key_norm.scale", (d + "attn.norm_added_k.weight",))]
        rows += _linear(o + "img_mlp.0", d + "ff.net.0.proj") + _linear(o + "img_mlp.2", d + "ff.net.2")
        rows += _linear(o + "txt_mlp.0", d + "ff_context.net.0.proj") + _linear(o + "txt_mlp.2", d + "ff_context.net.2")
        rows += _linear(o + "img_attn.proj", d + "attn.to_out.0") + _linear(o + "txt_attn.proj", d + "attn.to_add_out")
    for i in _count(keys, r"single_blocks\.(\d+)\."):
        o, d = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        rows += _linear(o + "modulation.lin", d + "norm.linear")
        rows += _linear(o + "linear1", f"{d}attn.to_q|{d}attn.to_k|{d}attn.to_v|{d}proj_mlp", CONCAT)
        rows += [Row(o + "norm.query_norm.scale", (d + "attn.norm_q.weight",)),
                 Row(o + "norm.key_norm.scale", (d + "attn.norm_k.weight",))]
        rows += _linear(o + "linear2", d + "proj_out")
    rows += _linear("final_layer.linear", "proj_out")
    rows += _linear("final_layer.adaLN_modulation.1", "norm_out.linear", SWAP)
    return rows


def sd3_rows(keys) -> list[Row]:
    """Rows for an SD3/SD3.5 MMDiT whose original keys (without prefix) are `keys`."""
    rows = [Row("pos_embed", ("pos_embed.pos_embed",))] + _linear("x_embedder.proj", "pos_embed.proj")
    rows += _linear("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1")
    rows += _linear("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2")
    rows += _linear("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1")
    rows += _linear("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2")
    rows += _linear("context_embedder", "context_embedder")
    blocks = _count(keys, r"joint_blocks\.(\d+)\.")
    for i in blocks:
        o, d = f"joint_blocks.{i}.", f"transformer_blocks.{i}."
        last = i == blocks[-1]  # its context stream ends here: no output projection or MLP, a shift/scale norm
        rows += _linear(o + "x_block.attn.qkv", f"{d}attn.to_q|{d}attn.to_k|{d}attn.to_v", CONCAT)
        rows += _linear(o + "context_block.attn.qkv", f"{d}attn.add_q_proj|{d}attn.add_k_proj|{d}attn.add_v_proj",
                        CONCAT)
        if o + "x_block.attn.ln_q.weight" in keys:  # SD3.5: RMS norm on queries and keys
            rows += [Row(o + "x_block.attn.ln_q.weight", (d + "attn.norm_q.weight",)),
                     Row(o + "x_block.attn.ln_k.weight", (d + "attn.norm_k.weight",)),
                     Row(o + "context_block.attn.ln_q.weight", (d + "attn.norm_added_q.weight",)),
                     Row(o + "context_block.attn.ln_k.weight", (d + "attn.norm_added_k.weight",))]
        rows += _linear(o + "x_block.attn.proj", d + "attn.to_out.0")
        if o + "x_block.attn2.qkv.weight" in keys:  # SD3.5 medium's dual attention layers
            rows += _linear(o + "x_block.attn2.qkv", f"{d}attn2.to_q|{d}attn2.to_k|{d}attn2.to_v", CONCAT)
            if o + "x_block.attn2.ln_q.weight" in keys:
                rows += [Row(o + "x_block.attn2.ln_q.weight", (d + "attn2.norm_q.weight",)),
                         Row(o + "x_block.attn2.ln_k.weight", (d + "attn2.norm_k.weight",))]
            rows += _linear(o + "x_block.attn2.proj", d + "attn2.to_out.0")
        rows += _linear(o + "x_block.adaLN_modulation.1", d + "norm1.linear")
        rows += _linear(o + "context_block.adaLN_modulation.1", d + "norm1_context.linear", SWAP if last else COPY)
        rows += _linear(o + "x_block.mlp.fc1", d + "ff.net.0.proj") + _linear(o + "x_block.mlp.fc2", d + "ff.net.2")
        if not last:
            rows += _linear(o + "context_block.attn.proj", d + "attn.to_add_out")
            rows += _linear(o + "context_block.mlp.fc1", d + "ff_context.net.0.proj")
            rows += _linear(o + "context_block.mlp.fc2", d + "ff_context.net.2")
    rows += _linear("final_layer.linear", "proj_out")
    rows += _linear("final_layer.adaLN_modulation.1", "norm_out.linear", SWAP)
    return rows


def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def to_diffusers(original: dict[str, torch.Tensor], rows: list[Row],
                 shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Original tensors -> diffusers tensors. `shapes`: each diffusers tensor's shape in the model being built,
    which decides how a fused tensor splits. A missing original tensor raises KeyError naming it."""
    out: dict[str, torch.Tensor] = {}
    for row in rows:
        tensor = original[row.original]
        if row.kind == CONCAT:
            sizes = [shapes[name][0] for name in row.diffusers]
            if sum(sizes) != tensor.shape[0]:
                raise ValueError(f"{row.original} has {tensor.shape[0]} rows, its parts {sum(sizes)}")
            out.update(zip(row.diffusers, torch.split(tensor, sizes, dim=0)))
        else:
            out[row.diffusers[0]] = _swap_halves(tensor) if row.kind == SWAP else tensor
    return out


def to_original(diffusers: dict[str, torch.Tensor], rows: list[Row]) -> dict[str, torch.Tensor]:
    """Diffusers tensors -> original tensors (writes the test models' single files)."""
    out = {}
    for row in rows:
        parts = [diffusers[name] for name in row.diffusers]
        tensor = torch.cat(parts, dim=0) if row.kind == CONCAT else parts[0]
        out[row.original] = _swap_halves(tensor) if row.kind == SWAP else tensor
    return out


def flux_rows_for_model(transformer) -> list[Row]:
    """Rows matching a diffusers FluxTransformer2DModel (for writing its original file)."""
    config = transformer.config
    keys = {f"double_blocks.{i}." for i in range(config.num_layers)}
    keys |= {f"single_blocks.{i}." for i in range(config.num_single_layers)}
    if config.guidance_embeds:
        keys.add("guidance_in.in_layer.weight")
    return flux_rows(keys)


def sd3_rows_for_model(transformer) -> list[Row]:
    """Rows matching a diffusers SD3Transformer2DModel (for writing its original file)."""
    config = transformer.config
    keys: set[str] = set()
    for i in range(config.num_layers):
        keys.add(f"joint_blocks.{i}.")
        if config.qk_norm:
            keys.add(f"joint_blocks.{i}.x_block.attn.ln_q.weight")
        if i in (config.dual_attention_layers or ()):
            keys.add(f"joint_blocks.{i}.x_block.attn2.qkv.weight")
            if config.qk_norm:
                keys.add(f"joint_blocks.{i}.x_block.attn2.ln_q.weight")
    return sd3_rows(keys)
