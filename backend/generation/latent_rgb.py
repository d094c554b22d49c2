"""Fitting a cheap latent->RGB preview to a VAE ("Approx cheap"), from the VAE itself.

The published SD1.5 and SDXL factors fit only those latent spaces; any other VAE (the built-in demo model's, a
future model's) previews in wrong colours with them. So each VAE is sampled once: latents as a sampler holds
them (random, in blocks, so each block decodes to a colour of its own) and the latents of a palette of solid
colours are decoded by the VAE, giving the colour it makes at each latent position. Least squares then finds
the linear map (weights and bias) that best turns a latent position into that colour, and the same samples
measure how well it, or a TAESD decoder, does.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

LEVELS = (0.0, 0.5, 1.0)  # a 3x3x3 cube of solid colours, encoded
RANDOM_IMAGES = 16  # random latents of unit variance (the sampler's scale), in blocks of BLOCK x BLOCK positions
BLOCK = 2
LATENT_SIDE = 4  # each sample is LATENT_SIDE x LATENT_SIDE latent positions
FIT_SEED = 0


@dataclass(frozen=True)
class LatentRGB:
    """rgb (in -1..1) = latent @ weights + bias, per latent position; latents as the sampler holds them."""
    weights: tuple[tuple[float, float, float], ...]  # one row per latent channel
    bias: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def channels(self) -> int:
        return len(self.weights)

    def to_json(self) -> dict:
        return {"weights": [list(row) for row in self.weights], "bias": list(self.bias)}

    @classmethod
    def from_json(cls, data: dict) -> LatentRGB:
        return cls(tuple(tuple(float(v) for v in row) for row in data["weights"]),
                   tuple(float(v) for v in data["bias"]))

    def colours(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) -> (N, 3, h, w) in -1..1 (not clamped)."""
        weights, bias = torch.tensor(self.weights), torch.tensor(self.bias)
        return torch.einsum("nchw,cr->nrhw", latents.float().cpu(), weights) + bias[None, :, None, None]

    def render(self, latent: torch.Tensor) -> Image.Image:
        """latent: (channels, h, w) -> an RGB image of the latent's size."""
        return to_image(self.colours(latent[None])[0])


def to_image(rgb: torch.Tensor) -> Image.Image:
    """(3, h, w) in -1..1 -> a PIL image."""
    pixels = ((rgb.float().cpu() + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8)
    return Image.fromarray(np.ascontiguousarray(pixels.permute(1, 2, 0).numpy()))


@dataclass(frozen=True)
class FitSamples:
    """Latents as the sampler holds them (N, C, h, w) and the colours the VAE decodes at each position (N, 3, h, w)."""
    latents: torch.Tensor
    colours: torch.Tensor


def solid_colours(scale: int) -> torch.Tensor:
    """(27, 3, H, W) in -1..1: the cube's solid colours at LATENT_SIDE latent positions a side."""
    side = LATENT_SIDE * scale
    solids = torch.tensor([(r, g, b) for r in LEVELS for g in LEVELS for b in LEVELS], dtype=torch.float32)
    return solids[:, :, None, None].expand(-1, -1, side, side) * 2 - 1


def vae_scale(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def to_vae_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """The sampler's latents -> what the VAE's decoder takes (undo the scaling and shift)."""
    scaling = float(getattr(vae.config, "scaling_factor", None) or 1.0)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    return latents / scaling + shift


@torch.no_grad()
def fitting_samples(vae) -> FitSamples:
    """Sample a diffusers AutoencoderKL (any latent channel count) on its own device, in float32 when it
    overflows in fp16 (SDXL's)."""
    config, scale = vae.config, vae_scale(vae)
    scaling = float(getattr(config, "scaling_factor", None) or 1.0)
    shift = float(getattr(config, "shift_factor", None) or 0.0)
    dtype = next(vae.parameters()).dtype
    upcast = dtype == torch.float16 and getattr(config, "force_upcast", False)
    generator = torch.Generator().manual_seed(FIT_SEED)
    channels = config.latent_channels
    blocks = torch.randn(RANDOM_IMAGES, channels, LATENT_SIDE // BLOCK, LATENT_SIDE // BLOCK, generator=generator)
    random_latents = F.interpolate(blocks, scale_factor=BLOCK, mode="nearest")
    try:
        if upcast:
            vae.to(torch.float32)
        parameter = next(vae.parameters())
        encoded = vae.encode(solid_colours(scale).to(parameter.device, parameter.dtype)).latent_dist.mode()
        latents = torch.cat([random_latents.to(encoded), (encoded - shift) * scaling])
        decoded = vae.decode(to_vae_latents(vae, latents)).sample.float().clamp(-1, 1)
    finally:
        if upcast:
            vae.to(dtype)
    return FitSamples(latents=latents.float().cpu(), colours=F.avg_pool2d(decoded, scale).cpu())


def fit_latent_rgb(samples: FitSamples) -> LatentRGB:
    latents, colours = samples.latents, samples.colours
    inputs = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).double()
    outputs = colours.permute(0, 2, 3, 1).reshape(-1, 3).double()
    design = torch.cat([inputs, torch.ones(len(inputs), 1, dtype=torch.float64)], dim=1)
    solution = torch.linalg.lstsq(design, outputs, driver="gelsd").solution
    if not torch.isfinite(solution).all():
        raise ValueError("the VAE's latents do not determine its colours linearly (non-finite fit)")
    return LatentRGB(tuple(tuple(row) for row in solution[:-1].tolist()), tuple(solution[-1].tolist()))


def fit_error(samples: FitSamples, colours_of) -> float:
    """Mean absolute difference (in -1..1) between the VAE's colours and `colours_of(latents)` (N, 3, h, w)."""
    return float((colours_of(samples.latents).float().clamp(-1, 1) - samples.colours).abs().mean())
