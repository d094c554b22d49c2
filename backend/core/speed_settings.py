"""The operator's speed/memory choices (flags), as plain data; backend.models.speed_options applies them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

OFFLOAD_MODES = ("none", "model", "sequential")
VAE_TILING_MODES = ("auto", "always", "never")
AUTO_TILING_PIXELS = 1536 * 1536  # "auto" tiles the VAE above this output size (SD1 at 2x hires and up)


@dataclass(frozen=True)
class SpeedOptions:
    offload: str = "none"  # none | model (--medvram) | sequential (--lowvram)
    compile: bool = False  # torch.compile the UNet (GPU: also channels_last)
    vae_tiling: str = "auto"  # auto | always | never
    compile_cache_dir: Path | None = None  # where inductor keeps compiled kernels across restarts

    def __post_init__(self):
        if self.offload not in OFFLOAD_MODES:
            raise ValueError(f"offload: must be one of {', '.join(OFFLOAD_MODES)}; got {self.offload!r}")
        if self.vae_tiling not in VAE_TILING_MODES:
            raise ValueError(f"vae_tiling: must be one of {', '.join(VAE_TILING_MODES)}; got {self.vae_tiling!r}")

    def tiles_vae(self, width: int, height: int) -> bool:
        return self.vae_tiling == "always" or (self.vae_tiling == "auto" and width * height > AUTO_TILING_PIXELS)
