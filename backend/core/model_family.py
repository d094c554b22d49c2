"""The model families this server runs, as one type (the key of every per-family table: configs, pipelines,
latent colours, TAESD files...). Plain strings at runtime, so they read and serialise as before."""
from __future__ import annotations

from typing import Literal, get_args

ModelFamily = Literal["sd1", "sd2", "sdxl", "sdxl-refiner", "flux", "sd3"]
MODEL_FAMILIES: tuple[str, ...] = get_args(ModelFamily)
FAMILY_LABELS: dict[ModelFamily, str] = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL", "sdxl-refiner": "SDXL refiner",
                                     "flux": "Flux.1", "sd3": "SD3"}
FLOW_FAMILIES = ("flux", "sd3")  # flow-matching transformers: 16-channel latents, T5 text encoder
