"""OneFormer (Swin backbone) from the original checkpoints sd-webui-controlnet reads
(annotator/downloads/oneformer/*.pth: detectron2 checkpoints, {"model": the original module's state}), as
transformers' OneFormerForUniversalSegmentation. Its size (Swin dims, depths, heads, window; queries, classes,
layers) is read from the tensors' shapes, so nothing is fetched. The key renaming follows the layouts of the
original OneFormer modules (backbone/swin.py, pixel_decoder/msdeformattn.py, transformer_decoder/*) and of
transformers' classes; attention projections stored fused (q, k, v in one tensor) are split."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

from backend.controlnet.annotator_networks import AnnotatorFileError, read_annotator_state, refuse_unless_fits

BACKBONE, PIXEL_DECODER, PREDICTOR = "backbone.", "sem_seg_head.pixel_decoder.", "sem_seg_head.predictor."
# what the original checkpoints hold for training only (text branch, loss) or recompute (Swin's index buffers)
TRAINING_ONLY = re.compile(r"^(text_encoder|text_projector|prompt_ctx|criterion)\.|\.relative_position_index$")
# transformers' keys that the original has no counterpart for and inference does not read
UNUSED_HERE = re.compile(r"^criterion\.|\.swin\.layernorm\.")
# the original's fixed choices (its configs): deformable attention over 3 levels, 4 points each
DEFORMABLE_LEVELS, DEFORMABLE_POINTS = 3, 4

# transformers' module paths
SWIN, PIXELS, QUERIES = ("model.pixel_level_module.encoder.", "model.pixel_level_module.decoder.",
                         "model.transformer_module.")
# original name -> transformers' name, first match wins; \1... keep the numbered parts
RENAMES = [
    (r"backbone\.patch_embed\.proj\.", f"{SWIN}swin.embeddings.patch_embeddings.projection."),
    (r"backbone\.patch_embed\.norm\.", f"{SWIN}swin.embeddings.norm."),
    (r"backbone\.layers\.(\d+)\.blocks\.(\d+)\.(.+)$", rf"{SWIN}swin.encoder.layers.\1.blocks.\2.\3"),
    (r"backbone\.layers\.(\d+)\.downsample\.", rf"{SWIN}swin.encoder.layers.\1.downsample."),
    (r"backbone\.norm(\d+)\.", lambda match: f"{SWIN}hidden_states_norms.stage{int(match.group(1)) + 1}."),
    (r"sem_seg_head\.pixel_decoder\.(adapter|layer)_(\d+)\.norm\.", rf"{PIXELS}\1_\2.1."),
    (r"sem_seg_head\.pixel_decoder\.(adapter|layer)_(\d+)\.weight", rf"{PIXELS}\1_\2.0.weight"),
    (r"sem_seg_head\.pixel_decoder\.input_proj\.", f"{PIXELS}input_projections."),
    (r"sem_seg_head\.pixel_decoder\.transformer\.level_embed", f"{PIXELS}level_embed"),
    (r"sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.(.+)$", rf"{PIXELS}encoder.layers.\1.\2"),
    (r"sem_seg_head\.pixel_decoder\.mask_features\.", f"{PIXELS}mask_projection."),
    (r"sem_seg_head\.predictor\.query_embed\.", f"{QUERIES}queries_embedder."),
    (r"sem_seg_head\.predictor\.level_embed\.", f"{QUERIES}level_embed."),
    (r"sem_seg_head\.predictor\.decoder_norm\.", f"{QUERIES}decoder.decoder_norm."),
    (r"sem_seg_head\.predictor\.class_input_proj\.", f"{QUERIES}decoder.query_input_projection."),
    (r"sem_seg_head\.predictor\.class_embed\.", f"{QUERIES}decoder.class_embed."),
    (r"sem_seg_head\.predictor\.mask_embed\.layers\.(\d+)\.", rf"{QUERIES}decoder.mask_embed.layers.\1.0."),
    (r"sem_seg_head\.predictor\.class_transformer\.decoder\.", f"{QUERIES}decoder.query_transformer.decoder."),
    (r"sem_seg_head\.predictor\.transformer_cross_attention_layers\.(\d+)\.",
     rf"{QUERIES}decoder.layers.\1.cross_attn."),
    (r"sem_seg_head\.predictor\.transformer_self_attention_layers\.(\d+)\.norm\.",
     rf"{QUERIES}decoder.layers.\1.self_attn.norm."),
    (r"sem_seg_head\.predictor\.transformer_self_attention_layers\.(\d+)\.self_attn\.",
     rf"{QUERIES}decoder.layers.\1.self_attn.self_attn."),
    (r"sem_seg_head\.predictor\.transformer_ffn_layers\.(\d+)\.", rf"{QUERIES}decoder.layers.\1.ffn."),
    (r"task_mlp\.layers\.(\d+)\.", r"model.task_encoder.task_mlp.layers.\1.0."),
]
# within those: the original Swin block's and deformable encoder layer's own names
BLOCK_RENAMES = [
    (r"(\.blocks\.\d+\.)norm1\.", r"\1layernorm_before."), (r"(\.blocks\.\d+\.)norm2\.", r"\1layernorm_after."),
    (r"(\.blocks\.\d+\.)attn\.relative_position_bias_table$",
     r"\1attention.relative_position_bias.relative_position_bias_table"),
    (r"(\.blocks\.\d+\.)attn\.proj\.", r"\1attention.o_proj."),
    (r"(decoder\.encoder\.layers\.\d+\.)linear1\.", r"\1fc1."),
    (r"(decoder\.encoder\.layers\.\d+\.)linear2\.", r"\1fc2."),
    (r"(decoder\.encoder\.layers\.\d+\.)norm1\.", r"\1self_attn_layer_norm."),
    (r"(decoder\.encoder\.layers\.\d+\.)norm2\.", r"\1final_layer_norm."),
]
# fused projections: (original suffix, transformers' three names), split in thirds along the first dimension
FUSED = [
    (re.compile(r"(\.blocks\.\d+\.)attn\.qkv\.(weight|bias)$"),
     ("attention.q_proj", "attention.k_proj", "attention.v_proj")),
    (re.compile(r"(\.layers\.\d+\.self_attn\.self_attn\.)in_proj_(weight|bias)$"), ("q_proj", "k_proj", "v_proj")),
]


def transformers_name(key: str) -> str | None:
    for pattern, replacement in RENAMES:
        renamed, count = re.subn(f"^{pattern}", replacement, key)
        if count:
            for block_pattern, block_replacement in BLOCK_RENAMES:
                renamed = re.sub(block_pattern, block_replacement, renamed)
            return renamed
    return None


def transformers_state(original: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The original checkpoint's tensors under transformers' names, and the original keys nothing took."""
    state, left = {}, []
    for key, value in original.items():
        if TRAINING_ONLY.search(key):
            continue
        renamed = transformers_name(key)
        if renamed is None:
            left.append(key)
            continue
        for pattern, names in FUSED:
            fused = pattern.search(renamed)
            if fused:
                stem, kind = renamed[: fused.start()] + fused.group(1), fused.group(2)
                for name, part in zip(names, value.chunk(3, dim=0), strict=True):
                    state[f"{stem}{name}.{kind}"] = part
                break
        else:
            state[renamed] = value
    return state, left


def numbered(state: dict[str, torch.Tensor], pattern: str) -> int:
    """How many of a numbered module the checkpoint holds (the largest index matched, plus one)."""
    indices = [int(match.group(1)) for key in state for match in (re.fullmatch(pattern, key),) if match]
    return max(indices) + 1 if indices else 0


def oneformer_config(original: dict[str, torch.Tensor]):
    """transformers' OneFormerConfig for the network the original checkpoint holds, read from its shapes."""
    from transformers import OneFormerConfig, SwinConfig

    patch = original[f"{BACKBONE}patch_embed.proj.weight"]
    embed_dim = patch.shape[0]
    stages = range(numbered(original, r"backbone\.layers\.(\d+)\.blocks\.0\.norm1\.weight"))
    depths = [numbered(original, rf"backbone\.layers\.{stage}\.blocks\.(\d+)\.norm1\.weight") for stage in stages]
    tables = [original[f"{BACKBONE}layers.{stage}.blocks.0.attn.relative_position_bias_table"] for stage in stages]
    window = (round(tables[0].shape[0] ** 0.5) + 1) // 2  # the table holds (2 * window - 1) ** 2 offsets
    mlp_ratio = original[f"{BACKBONE}layers.0.blocks.0.mlp.fc1.weight"].shape[0] / embed_dim
    swin = SwinConfig(embed_dim=embed_dim, depths=depths, num_heads=[table.shape[1] for table in tables],
                      window_size=window, patch_size=patch.shape[2], num_channels=patch.shape[1], mlp_ratio=mlp_ratio,
                      qkv_bias=f"{BACKBONE}layers.0.blocks.0.attn.qkv.bias" in original, drop_path_rate=0.0,
                      out_features=[f"stage{stage + 1}" for stage in stages])
    queries = original[f"{PREDICTOR}query_embed.weight"]
    mask_features = original[f"{PIXEL_DECODER}mask_features.weight"]
    deformable = original[f"{PIXEL_DECODER}transformer.encoder.layers.0.self_attn.attention_weights.weight"]
    return OneFormerConfig(
        backbone_config=swin, num_queries=queries.shape[0], hidden_dim=queries.shape[1],
        num_labels=original[f"{PREDICTOR}class_embed.weight"].shape[0] - 1,  # the last class is "no object"
        conv_dim=mask_features.shape[1], mask_dim=mask_features.shape[0],
        num_attention_heads=deformable.shape[0] // (DEFORMABLE_LEVELS * DEFORMABLE_POINTS),
        encoder_layers=numbered(original, r"sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\."
                                          r"linear1\.weight"),
        encoder_feedforward_dim=original[f"{PIXEL_DECODER}transformer.encoder.layers.0.linear1.weight"].shape[0],
        # the original counts the learnt queries' prediction as a layer: its DEC_LAYERS is the built layers + 1
        decoder_layers=numbered(original, r"sem_seg_head\.predictor\.transformer_ffn_layers\.(\d+)\.linear1\.weight")
        + 1,
        dim_feedforward=original[f"{PREDICTOR}transformer_ffn_layers.0.linear1.weight"].shape[0],
        query_dec_layers=numbered(original, r"sem_seg_head\.predictor\.class_transformer\.decoder\.layers\.(\d+)\."
                                            r"linear1\.weight"),
        task_seq_len=original["task_mlp.layers.0.weight"].shape[1],
        is_training=False, output_auxiliary_logits=False, use_auxiliary_loss=False, dropout=0.0)


def oneformer_network(original: dict[str, torch.Tensor], field: str, path: Path) -> torch.nn.Module:
    """transformers' OneFormer filled from the original checkpoint's tensors; a file that is not a OneFormer
    checkpoint, or holds parts this mapping does not know, is refused naming what differs."""
    from transformers import OneFormerForUniversalSegmentation

    try:
        config = oneformer_config(original)
    except (KeyError, IndexError, ValueError) as error:
        raise AnnotatorFileError(field, f"{path} does not hold an original OneFormer (Swin) checkpoint ({error})") \
            from error
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        network = OneFormerForUniversalSegmentation(config)
    state, left = transformers_state(original)
    refuse_unless_fits(state, network.state_dict(), field, path, "OneFormer", unknown=left,
                       optional=lambda key: bool(UNUSED_HERE.search(key)))
    network.load_state_dict(state, strict=False)
    return network


def load_oneformer(path: Path, field: str) -> torch.nn.Module:
    return oneformer_network(read_annotator_state(path, field), field, path)

