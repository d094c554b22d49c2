"""Live previews of the latents during sampling.

By default a cheap linear latent->RGB approximation (A1111's "Approx cheap"): no model, microseconds.
When a TAESD decoder is in models/VAE-approx/ (a diffusers AutoencoderTiny folder named `taesd` for
SD1.x/SD2.x, `taesdxl` for SDXL), it is used instead for sharper previews.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

# Rows: the 4 latent channels; columns: their contribution to R, G, B (A1111's cheap approximation).
LATENT_RGB_SD = torch.tensor([[0.298, 0.207, 0.208], [0.187, 0.286, 0.173],
                              [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]])
LATENT_RGB_SDXL = torch.tensor([[0.3448, 0.4168, 0.4395], [-0.1953, -0.0290, 0.0250],
                                [0.1074, 0.0886, -0.0163], [-0.3730, -0.2499, -0.2088]])
TAESD_FOLDERS = {"sd1": "taesd", "sd2": "taesd", "sdxl": "taesdxl", "sdxl-refiner": "taesdxl"}


def cheap_preview(latent: torch.Tensor, family: str) -> Image.Image:
    """latent: (4, h, w) diffusion-space latent -> an RGB image of the latent's size."""
    factors = LATENT_RGB_SDXL if family.startswith("sdxl") else LATENT_RGB_SD
    rgb = torch.einsum("chw,cr->hwr", latent.float().cpu(), factors)
    pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    return Image.fromarray(np.ascontiguousarray(pixels))


class PreviewRenderer:
    def __init__(self, approx_dir: Path, device: torch.device, dtype: torch.dtype):
        self.approx_dir = Path(approx_dir)
        self.device = device
        self.dtype = dtype
        self._decoders: dict[str, object] = {}

    def _taesd(self, family: str):
        folder = self.approx_dir / TAESD_FOLDERS.get(family, "taesd")
        if not (folder / "config.json").is_file():
            return None
        if folder.name not in self._decoders:
            from diffusers import AutoencoderTiny

            try:
                self._decoders[folder.name] = AutoencoderTiny.from_pretrained(
                    str(folder), dtype=self.dtype, local_files_only=True).to(self.device).eval()
            except (OSError, ValueError) as error:
                log.warning("TAESD in %s could not be loaded (%s); using the cheap preview", folder, error)
                self._decoders[folder.name] = None
        return self._decoders[folder.name]

    def render(self, latent: torch.Tensor, family: str) -> Image.Image:
        decoder = self._taesd(family)
        if decoder is None:
            return cheap_preview(latent, family)
        with torch.no_grad():
            image = decoder.decode(latent[None].to(self.device, self.dtype)).sample[0]
        pixels = ((image.float().cpu() + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8)
        return Image.fromarray(pixels.permute(1, 2, 0).numpy())
