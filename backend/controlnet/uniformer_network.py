"""UniFormer + UPerNet from the mmseg checkpoint sd-webui-controlnet reads for seg_ufade20k
(annotator/downloads/uniformer/upernet_global_small.pth: {"state_dict": ..., "meta": ...}). The backbone is built
here with the original's module names (annotator/uniformer/uniformer.py: convolutional blocks in stages 1-2, global
self-attention in 3-4), the decode head is transformers' UperNetHead (the same modules as mmseg's UPerHead; its
"classifier" and "batch_norm" are mmseg's "conv_seg" and "bn"). Widths, depths, MLP ratio, head channels and classes
are read from the tensors' shapes; what the file cannot tell comes from the extension's config
(exp/upernet_global_small: head_dim 64, global attention in stage 3, pool scales 1, 2, 3, 6). The auxiliary FCN head
only trains, and is not built."""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from backend.controlnet.annotator_networks import AnnotatorFileError, read_annotator_state, refuse_unless_fits
from backend.controlnet.segmentation_palettes import ADE20K_COLORS

HEAD_DIM = 64  # channels per attention head (the config's head_dim; heads = width // 64)
POOL_SCALES = (1, 2, 3, 6)  # the UPerHead's pyramid pooling (the config's pool_scales)
STAGES = 4
TRAINING_ONLY = re.compile(r"^auxiliary_head\.")


class ConvMlp(nn.Module):
    """The two-layer MLP of the convolutional blocks, as 1x1 convolutions."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.Conv2d(hidden, dim, 1)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class TokenMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class ConvBlock(nn.Module):
    """Stages 1-2: a depthwise positional convolution, then local aggregation (1x1, depthwise 5x5, 1x1) and an MLP,
    each on batch-normalised input and added back."""

    def __init__(self, dim: int, mlp_ratio: float):
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.BatchNorm2d(dim)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.attn = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.pos_embed(x)
        x = x + self.conv2(self.attn(self.conv1(self.norm1(x))))
        return x + self.mlp(self.norm2(x))


class Attention(nn.Module):
    def __init__(self, dim: int, qkv_bias: bool):
        super().__init__()
        self.heads = dim // HEAD_DIM
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        batch, tokens, dim = x.shape
        query, key, value = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        attended = nn.functional.scaled_dot_product_attention(query, key, value)  # scaled by head size ** -0.5
        return self.proj(attended.transpose(1, 2).reshape(batch, tokens, dim))


class AttentionBlock(nn.Module):
    """Stages 3-4: a depthwise positional convolution, then global self-attention over all positions and an MLP,
    each on layer-normalised tokens and added back."""

    def __init__(self, dim: int, mlp_ratio: float, qkv_bias: bool):
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = TokenMlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.pos_embed(x)
        batch, channels, height, width = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        tokens = tokens + self.attn(self.norm1(tokens))
        tokens = tokens + self.mlp(self.norm2(tokens))
        return tokens.transpose(1, 2).reshape(batch, channels, height, width)


class PatchEmbed(nn.Module):
    """A strided convolution (4 for the first stage, 2 for the others), layer-normalised per position."""

    def __init__(self, in_channels: int, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(self.proj(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class UniFormer(nn.Module):
    """The backbone: four stages, each's output layer-normalised (norm1..norm4), at 1/4, 1/8, 1/16 and 1/32."""

    def __init__(self, widths: list[int], depths: list[int], mlp_ratio: float, qkv_bias: bool):
        super().__init__()
        for stage in range(STAGES):
            number, width = stage + 1, widths[stage]
            self.add_module(f"patch_embed{number}",
                            PatchEmbed(3 if stage == 0 else widths[stage - 1], width, 4 if stage == 0 else 2))
            blocks = [ConvBlock(width, mlp_ratio) if stage < 2 else AttentionBlock(width, mlp_ratio, qkv_bias)
                      for _ in range(depths[stage])]
            self.add_module(f"blocks{number}", nn.ModuleList(blocks))
            self.add_module(f"norm{number}", nn.LayerNorm(width, eps=1e-6))

    def forward(self, x) -> tuple[torch.Tensor, ...]:
        features = []
        for number in range(1, STAGES + 1):
            x = getattr(self, f"patch_embed{number}")(x)
            for block in getattr(self, f"blocks{number}"):
                x = block(x)
            features.append(getattr(self, f"norm{number}")(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous())
        return tuple(features)


class UniFormerUperNet(nn.Module):
    """mmseg's EncoderDecoder at inference: the head's class scores at 1/4 of the input."""

    def __init__(self, widths: list[int], depths: list[int], mlp_ratio: float, qkv_bias: bool, channels: int,
                 classes: int):
        super().__init__()
        from transformers import UperNetConfig
        from transformers.models.upernet.modeling_upernet import UperNetHead

        self.backbone = UniFormer(widths, depths, mlp_ratio, qkv_bias)
        config = UperNetConfig(pool_scales=list(POOL_SCALES), hidden_size=channels, num_labels=classes)
        self.decode_head = UperNetHead(config, in_channels=list(widths))
        self.classes = classes

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.decode_head(self.backbone(pixels))


def ours_name(key: str) -> str:
    """mmseg's name -> ours: the backbone's are the same; the head's ConvModule "bn" and "conv_seg" differ."""
    if key.startswith("decode_head."):
        key = re.sub(r"\.bn\.", ".batch_norm.", key)
        key = re.sub(r"^decode_head\.conv_seg\.", "decode_head.classifier.", key)
    return key


def mapped_state(original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {ours_name(key): value for key, value in original.items() if not TRAINING_ONLY.search(key)}


def counted(state: dict[str, torch.Tensor], pattern: str) -> int:
    indices = [int(match.group(1)) for key in state for match in (re.fullmatch(pattern, key),) if match]
    return max(indices) + 1 if indices else 0


def network_size(original: dict[str, torch.Tensor]) -> dict:
    """The constructor's arguments for the network `original` holds, from its shapes."""
    widths = [original[f"backbone.patch_embed{stage}.proj.weight"].shape[0] for stage in range(1, STAGES + 1)]
    depths = [counted(original, rf"backbone\.blocks{stage}\.(\d+)\.pos_embed\.weight")
              for stage in range(1, STAGES + 1)]
    if not all(depths):
        raise ValueError("a stage without blocks")
    if any(width % HEAD_DIM for width in widths[2:]):
        raise ValueError(f"attention widths {widths[2:]} are not multiples of the heads' {HEAD_DIM} channels")
    return {"widths": widths, "depths": depths,
            "mlp_ratio": original["backbone.blocks1.0.mlp.fc1.weight"].shape[0] / widths[0],
            "qkv_bias": "backbone.blocks3.0.attn.qkv.bias" in original,
            "channels": original["decode_head.bottleneck.conv.weight"].shape[0],
            "classes": original["decode_head.conv_seg.weight"].shape[0]}


def uniformer_network(original: dict[str, torch.Tensor], field: str, path: Path, classes: int) -> UniFormerUperNet:
    """Our network filled from the mmseg checkpoint's tensors; a file that is not a UniFormer UPerNet checkpoint
    with `classes` classes, or holds tensors this mapping does not know, is refused naming what differs."""
    try:
        size = network_size(original)
    except (KeyError, IndexError, ValueError) as error:
        raise AnnotatorFileError(field, f"{path} does not hold an mmseg UniFormer UPerNet checkpoint ({error})") \
            from error
    if size["classes"] != classes:
        raise AnnotatorFileError(field, f"{path} segments {size['classes']} classes, not ADE20K's {classes}")
    network = UniFormerUperNet(**size)
    state = mapped_state(original)
    # batch norms' step counters are not read at inference (and older torch versions did not save them)
    refuse_unless_fits(state, network.state_dict(), field, path, "UniFormer UPerNet",
                       optional=lambda key: key.endswith(".num_batches_tracked"))
    network.load_state_dict(state, strict=False)
    return network


def load_uniformer(paths: tuple[Path, ...], field: str, classes: int = len(ADE20K_COLORS)) -> UniFormerUperNet:
    path = paths[0]
    original = read_annotator_state(path, field)
    return uniformer_network(original, field, path, classes)
