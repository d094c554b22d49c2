"""Depth Anything (v1 and v2) from the original checkpoints sd-webui-controlnet reads
(depth_anything/depth_anything_vitl14.pth, depth_anything_v2/depth_anything_v2_vitl.safetensors), run as transformers'
DepthAnythingForDepthEstimation (a DINOv2 ViT and the DPT neck and head). The originals name the ViT "pretrained."
(DINOv2's own names: one qkv matrix per block, layer scales "ls1/ls2.gamma") and the DPT part "depth_head."
(projects, resize_layers, scratch.layerN_rn, scratch.refinenetN, scratch.output_conv1/2). Widths, depth and the neck's
channels are read from the tensors' shapes; the heads are DINOv2's 64 channels each. Both versions hold the same
tensors: they differ in which blocks feed the neck (v1 the last four, v2 fixed ones per ViT size), so the preprocessor
says which version its file is."""
from __future__ import annotations

import math
import re
import types
from pathlib import Path

import torch

from backend.controlnet.annotator_networks import AnnotatorFileError, read_annotator_state, refuse_unless_fits

PATCH = 14
HEAD_DIM = 64  # DINOv2's channels per attention head (ViT-S 6 heads, B 12, L 16)
POSITION_OFFSET = 0.1  # DINOv2's interpolate_offset: added to the patch grid when scaling the position embeddings
# v2's DepthAnythingV2.intermediate_layer_idx by ViT depth (ViT-S and B: 12 blocks, L: 24), 0-based blocks
V2_BLOCKS = {12: (2, 5, 8, 11), 24: (4, 11, 17, 23)}


def fusion_layer(match: re.Match) -> str:
    """The original fuses from refinenet4 (the coarsest) to refinenet1; transformers numbers them in that order."""
    return f"neck.fusion_stage.layers.{4 - int(match.group(1))}."


# applied in order; each original name is renamed by one prefix rule (the renamed ones start with other words), the
# fusion blocks' parts then by the last two
RENAMES = (
    (r"^pretrained\.cls_token$", "backbone.embeddings.cls_token"),
    (r"^pretrained\.mask_token$", "backbone.embeddings.mask_token"),
    (r"^pretrained\.pos_embed$", "backbone.embeddings.position_embeddings"),
    (r"^pretrained\.patch_embed\.proj\.", "backbone.embeddings.patch_embeddings.projection."),
    (r"^pretrained\.blocks\.(\d+)\.ls(\d)\.gamma$", r"backbone.encoder.layer.\1.layer_scale\2.lambda1"),
    (r"^pretrained\.blocks\.(\d+)\.attn\.proj\.", r"backbone.encoder.layer.\1.attention.o_proj."),
    (r"^pretrained\.blocks\.(\d+)\.", r"backbone.encoder.layer.\1."),  # norm1, norm2, mlp.fc1, mlp.fc2
    (r"^pretrained\.norm\.", "backbone.layernorm."),
    (r"^depth_head\.projects\.(\d)\.", r"neck.reassemble_stage.layers.\1.projection."),
    (r"^depth_head\.resize_layers\.(\d)\.", r"neck.reassemble_stage.layers.\1.resize."),
    (r"^depth_head\.scratch\.layer(\d)_rn\.", lambda match: f"neck.convs.{int(match.group(1)) - 1}."),
    (r"^depth_head\.scratch\.refinenet(\d)\.", fusion_layer),
    (r"^depth_head\.scratch\.output_conv1\.", "head.conv1."),
    (r"^depth_head\.scratch\.output_conv2\.0\.", "head.conv2."),
    (r"^depth_head\.scratch\.output_conv2\.2\.", "head.conv3."),
    (r"^(neck\.fusion_stage\.layers\.\d\.)out_conv\.", r"\1projection."),
    (r"^(neck\.fusion_stage\.layers\.\d\.)resConfUnit(\d)\.conv(\d)\.", r"\1residual_layer\2.convolution\3."),
)


def hf_name(key: str) -> str:
    """An original tensor name -> transformers'; qkv matrices are split separately (mapped_state)."""
    for pattern, replacement in RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def mapped_state(original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original tensors under transformers' names, each block's qkv split into query, key and value."""
    state = {}
    for key, value in original.items():
        qkv = re.fullmatch(r"pretrained\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)", key)
        if qkv:
            block, kind = qkv.groups()
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
                state[f"backbone.encoder.layer.{block}.attention.{name}.{kind}"] = part
        else:
            state[hf_name(key)] = value
    return state


def blocks_in(original: dict[str, torch.Tensor]) -> int:
    indices = {int(match.group(1)) for key in original for match in (re.match(r"pretrained\.blocks\.(\d+)\.", key),)
               if match}
    if not indices:
        raise ValueError("no ViT blocks")
    return max(indices) + 1


def network_size(original: dict[str, torch.Tensor], version: int) -> dict:
    """The sizes transformers' config needs, from the original file's shapes; `version` (1 or 2) picks the blocks
    that feed the neck."""
    width = original["pretrained.cls_token"].shape[-1]
    depth = blocks_in(original)
    positions = original["pretrained.pos_embed"].shape[1] - 1
    grid = math.isqrt(positions)
    hidden = original["pretrained.blocks.0.mlp.fc1.weight"].shape[0]
    if width % HEAD_DIM or grid * grid != positions or hidden % width:
        raise ValueError(f"width {width}, {positions} positions or MLP width {hidden} do not make a DINOv2 ViT/14")
    if version == 1 and depth >= 4:
        blocks = tuple(range(depth - 4, depth))  # get_intermediate_layers(x, 4): the last four
    elif version == 1:
        raise ValueError(f"{depth} ViT blocks: the neck reads four")
    elif depth in V2_BLOCKS:
        blocks = V2_BLOCKS[depth]
    else:
        raise ValueError(f"{depth} ViT blocks: Depth Anything V2 is published for 12 (ViT-S/B) and 24 (ViT-L)")
    return {"width": width, "depth": depth, "heads": width // HEAD_DIM, "image_size": grid * PATCH,
            "mlp_ratio": hidden // width,
            "neck": [original[f"depth_head.projects.{index}.weight"].shape[0] for index in range(4)],
            "fusion": original["depth_head.scratch.layer1_rn.weight"].shape[0],
            "head_hidden": original["depth_head.scratch.output_conv2.0.weight"].shape[0],
            "stages": [block + 1 for block in blocks]}  # transformers' stage 0 is the embeddings


def depth_anything_config(size: dict):
    from transformers import DepthAnythingConfig, Dinov2Config

    backbone = Dinov2Config(hidden_size=size["width"], num_hidden_layers=size["depth"],
                            num_attention_heads=size["heads"], mlp_ratio=size["mlp_ratio"], patch_size=PATCH,
                            image_size=size["image_size"], out_indices=size["stages"], apply_layernorm=True,
                            reshape_hidden_states=False)
    return DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=size["width"], patch_size=PATCH,
                               neck_hidden_sizes=size["neck"], fusion_hidden_size=size["fusion"],
                               head_hidden_size=size["head_hidden"], depth_estimation_type="relative")


def original_position_encoding(embeddings, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """DINOv2's own scaling of the position embeddings to another patch grid: bicubic by the factor
    (grid + 0.1) / published grid, which samples slightly differently from transformers' scaling to the size."""
    table = embeddings.position_embeddings
    positions = table.shape[1] - 1
    rows, columns = height // PATCH, width // PATCH
    if tokens.shape[1] - 1 == positions and rows == columns:
        return table
    grid = math.isqrt(positions)
    patches = table[:, 1:].float().reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    scaled = torch.nn.functional.interpolate(
        patches, scale_factor=((rows + POSITION_OFFSET) / grid, (columns + POSITION_OFFSET) / grid), mode="bicubic")
    scaled = scaled.permute(0, 2, 3, 1).reshape(1, rows * columns, -1)
    return torch.cat((table[:, :1].float(), scaled), dim=1).to(table.dtype)


def build_network(size: dict):
    from transformers import DepthAnythingForDepthEstimation

    network = DepthAnythingForDepthEstimation(depth_anything_config(size))
    embeddings = network.backbone.embeddings
    embeddings.interpolate_pos_encoding = types.MethodType(original_position_encoding, embeddings)
    return network


def depth_anything_network(original: dict[str, torch.Tensor], field: str, path: Path, version: int):
    """transformers' Depth Anything filled from the original checkpoint's tensors; a file that is not one, or holds
    tensors this mapping does not know, is refused naming what differs."""
    try:
        size = network_size(original, version)
    except (KeyError, IndexError, ValueError) as error:
        raise AnnotatorFileError(field, f"{path} does not hold a Depth Anything checkpoint ({error})") from error
    with torch.device("meta"):  # built empty: the file's tensors are assigned below, nothing is initialised twice
        network = build_network(size)
    state = mapped_state(original)
    refuse_unless_fits(state, network.state_dict(), field, path, "Depth Anything")
    network.load_state_dict(state, assign=True)
    return network


def load_depth_anything(paths: tuple[Path, ...], field: str, version: int = 1):
    path = paths[0]
    original = read_annotator_state(path, field)
    return depth_anything_network(original, field, path, version)


def load_depth_anything_v2(paths: tuple[Path, ...], field: str):
    return load_depth_anything(paths, field, version=2)
