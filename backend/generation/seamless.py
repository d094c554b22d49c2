"""A1111's "Tiling": seamless images, made by padding every convolution of the UNet and the VAE circularly (the
left edge sees the right edge's pixels, the top the bottom's), along X, Y or both, for one job only.

The cached model's convolutions are changed per instance inside the block and restored when it ends, error or
not; the job holds the model's lease meanwhile, so no other job sees them.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

PAD_MODES = {True: "circular", False: "constant"}


def _padded_forward(conv: torch.nn.Conv2d, wrap_x: bool, wrap_y: bool):
    """The conv's own computation with its zero padding replaced: circular along the wrapped axes."""
    left, right, top, bottom = conv._reversed_padding_repeated_twice

    def conv_forward(pixels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        pixels = F.pad(pixels, (left, right, 0, 0), mode=PAD_MODES[wrap_x])
        pixels = F.pad(pixels, (0, 0, top, bottom), mode=PAD_MODES[wrap_y])
        return F.conv2d(pixels, weight, bias, conv.stride, 0, conv.dilation, conv.groups)

    return conv_forward


def _padded_convolutions(modules) -> list[torch.nn.Conv2d]:
    return [module for root in modules if root is not None for module in root.modules()
            if isinstance(module, torch.nn.Conv2d) and module.padding_mode == "zeros"
            and not isinstance(module.padding, str) and any(module.padding)]


@contextmanager
def seamless(modules, axes: str | None) -> Iterator[None]:
    """Within the block, `modules`' convolutions wrap around along `axes` ("XY", "X" or "Y"); None: unchanged."""
    if not axes:
        yield
        return
    changed = []
    try:
        for conv in _padded_convolutions(modules):
            conv._conv_forward = _padded_forward(conv, "X" in axes, "Y" in axes)
            changed.append(conv)
        yield
    finally:
        for conv in changed:
            del conv._conv_forward  # the class's method again
