"""Live previews of the latents during sampling, in the colours of the VAE the job uses.

Each VAE is sampled once (backend/generation/latent_rgb.py) and the result kept in the cache folder by the VAE's file
(checkpoint or VAE file, trusted while its size and mtime are unchanged). From the samples, the cheapest
preview that gets the colours right is chosen:
- a TAESD decoder in models/VAE-approx/ (A1111's `taesd_decoder.pth`, `taesdxl_decoder.pth`,
  `taesd3_decoder.pth`, `taef1_decoder.pth`, or a diffusers AutoencoderTiny folder `taesd/`, `taesdxl/`), when
  its colours agree with the VAE's about as well as the fitted map's do (so a TAESD made for SD's latent space
  never mis-colours another model);
- the linear map fitted to the VAE;
- the VAE itself, for a small VAE whose colours no linear map follows (the built-in demo model's);
- the published SD1.5/SDXL factors only when the VAE could not be sampled at all.
"""
from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from backend.core.model_family import ModelFamily
from backend.generation.latent_rgb import (
    LatentRGB,
    fit_error,
    fit_latent_rgb,
    fitting_samples,
    to_image,
    to_vae_latents,
)
from backend.generation.taesd_files import TAESD_DECODER_FILES, load_taesd_decoder
from backend.models.construction import ModelConstruction
from backend.models.file_facts import FileFactsCache
from backend.models.weight_files import CheckpointError

log = logging.getLogger(__name__)

# Rows: the 4 latent channels; columns: their contribution to R, G, B (A1111's cheap approximation).
LATENT_RGB_SD = torch.tensor([[0.298, 0.207, 0.208], [0.187, 0.286, 0.173],
                              [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]])
LATENT_RGB_SDXL = torch.tensor([[0.3448, 0.4168, 0.4395], [-0.1953, -0.0290, 0.0250],
                                [0.1074, 0.0886, -0.0163], [-0.3730, -0.2499, -0.2088]])
TAESD_FOLDERS = {"sd1": "taesd", "sd2": "taesd", "sdxl": "taesdxl", "sdxl-refiner": "taesdxl"}
FIT_VERSION = 1  # bump when the sampling or fitting changes, so cached verdicts are worked out again
TAESD_SLACK = 1.25  # TAESD may be this much further from the VAE's colours than the linear map (it is sharper)
GOOD_LINEAR_ERROR = 0.06  # mean error (in -1..1, about 8 of 255) under which the linear map looks right
SMALL_VAE_PARAMETERS = 5_000_000  # a decoder this small decodes a preview in milliseconds (SD's has 49M)
PREVIEW_NAMES = {"taesd": "TAESD", "linear": "colours fitted to the VAE", "vae": "the VAE itself (a small one)",
                 "published": "SD's published factors"}


def cheap_preview(latent: torch.Tensor, family: ModelFamily) -> Image.Image:
    """The published factors: latent (4, h, w) in SD's or SDXL's latent space -> an RGB image of its size."""
    factors = LATENT_RGB_SDXL if family.startswith("sdxl") else LATENT_RGB_SD
    rgb = torch.einsum("chw,cr->hwr", latent.float().cpu(), factors)
    pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    return Image.fromarray(np.ascontiguousarray(pixels))


@dataclass(frozen=True)
class VaePreview:
    """How one VAE's previews are drawn: "taesd", "linear" (with `fit`), "vae" (decode with the VAE itself) or
    "published" (the SD/SDXL factors)."""
    method: str
    fit: LatentRGB | None = None


def choose_method(linear_error: float, taesd_error: float | None, small_vae: bool) -> str:
    if taesd_error is not None and taesd_error <= linear_error * TAESD_SLACK + 0.01:
        return "taesd"
    if linear_error > GOOD_LINEAR_ERROR and small_vae:
        return "vae"
    return "linear"


class PreviewRenderer:
    def __init__(self, approx_dir: Path, device: torch.device, dtype: torch.dtype, cache_file: Path | None = None,
                 construction: ModelConstruction | None = None):
        """`cache_file`: where each VAE's samples' verdict is kept across restarts (None: memory only);
        `construction`: the app's lock for building modules (TAESD decoders are built under it)."""
        self.approx_dir = Path(approx_dir)
        self.device = device
        self.dtype = dtype
        self.construction = construction or ModelConstruction()
        self._facts = FileFactsCache(cache_file) if cache_file else None
        self._decoders: dict[str, object] = {}  # TAESD file or folder name -> decoder (None: unusable)
        self._vaes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # VAE module -> VaePreview
        self._lock = threading.Lock()

    # --- TAESD --------------------------------------------------------------------------------------
    def _taesd(self, family: ModelFamily):
        """The TAESD decoder for the family: A1111's .pth file, else a diffusers folder; None when neither."""
        file = self.approx_dir / TAESD_DECODER_FILES.get(family, "taesd_decoder.pth")
        folder = self.approx_dir / TAESD_FOLDERS.get(family, "taesd")
        with self._lock:
            if file.is_file():
                if file.name not in self._decoders:
                    self._decoders[file.name] = self._load_taesd_file(file)
                return self._decoders[file.name]
            if (folder / "config.json").is_file():
                if folder.name not in self._decoders:
                    self._decoders[folder.name] = self._load_taesd_folder(folder)
                return self._decoders[folder.name]
        return None

    def _load_taesd_file(self, file: Path):
        try:
            return load_taesd_decoder(file, self.construction).to(self.device, self.dtype)
        except CheckpointError as error:
            log.warning("TAESD %s cannot be used (%s); previews use the fitted colours", file, error)
            return None

    def _load_taesd_folder(self, folder: Path):
        from diffusers import AutoencoderTiny

        try:
            with self.construction.building():
                tiny = AutoencoderTiny.from_pretrained(str(folder), dtype=self.dtype, local_files_only=True)
            return tiny.decoder.to(self.device).eval()
        except (OSError, ValueError) as error:
            log.warning("TAESD in %s could not be loaded (%s); previews use the fitted colours", folder, error)
            return None

    def _taesd_name(self, family: ModelFamily) -> str:
        """The TAESD in use for `family`, with its size: a replaced file is checked against each VAE again."""
        file = self.approx_dir / TAESD_DECODER_FILES.get(family, "taesd_decoder.pth")
        if file.is_file():
            return f"{file.name}:{file.stat().st_size}"
        return TAESD_FOLDERS.get(family, "taesd")

    @staticmethod
    @torch.no_grad()
    def _taesd_colours(decoder, latents: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) latents -> (N, 3, H, W) in -1..1 (DecoderTiny clamps its input and scales its output)."""
        parameter = next(decoder.parameters())
        return decoder(latents.to(parameter.device, parameter.dtype)).float().cpu()

    # --- choosing, once per VAE ---------------------------------------------------------------------
    def prepare(self, vae, source: Path | None, family: ModelFamily) -> VaePreview:
        """Find or work out how to preview `vae`, whose weights come from `source` (a checkpoint or VAE file; None
        or a hub id: kept in memory only). Cheap after the first call for the same VAE; never raises."""
        with self._lock:
            known = self._vaes.get(vae)
        if known is not None:
            return known
        taesd = self._taesd(family)
        taesd_name = self._taesd_name(family) if taesd is not None else None
        small = sum(p.numel() for p in getattr(vae, "decoder", vae).parameters()) <= SMALL_VAE_PARAMETERS
        facts = self._cached(source)
        if facts is None or (taesd_name is not None and taesd_name not in facts["taesd"]):
            facts = self._sample(vae, taesd, taesd_name, (facts or {}).get("taesd", {}))
            if facts is not None:
                self._store(source, facts)
        if facts is None:
            preview = VaePreview("published")
        else:
            method = choose_method(facts["linear_error"], facts["taesd"].get(taesd_name) if taesd_name else None,
                                   small)
            preview = VaePreview(method, LatentRGB.from_json(facts["latent_rgb"]))
        log.info("live previews: %s", PREVIEW_NAMES[preview.method])
        with self._lock:
            self._vaes[vae] = preview
        return preview

    def _sample(self, vae, taesd, taesd_name: str | None, taesd_errors: dict) -> dict | None:
        try:
            samples = fitting_samples(vae)
            fit = fit_latent_rgb(samples)
        except Exception as error:  # an unusual VAE: the published factors remain
            log.warning("could not fit preview colours to this VAE (%s: %s); using SD's published factors",
                        type(error).__name__, error)
            return None
        taesd_errors = dict(taesd_errors)
        if taesd is not None:
            size = samples.colours.shape[-2:]
            try:
                taesd_errors[taesd_name] = fit_error(
                    samples, lambda latents: F.adaptive_avg_pool2d(self._taesd_colours(taesd, latents), size))
            except RuntimeError as error:  # made for another latent channel count
                log.info("%s does not decode this VAE's latents (%s)", taesd_name, error)
                taesd_errors[taesd_name] = float("inf")
        return {"fit_version": FIT_VERSION, "latent_rgb": fit.to_json(),
                "linear_error": fit_error(samples, fit.colours), "taesd": taesd_errors}

    def _cached(self, source: Path | None) -> dict | None:
        if self._facts is None or source is None or not Path(source).exists():
            return None
        try:
            facts = self._facts.get(source)
        except OSError:
            return None
        return facts if facts and facts.get("fit_version") == FIT_VERSION else None

    def _store(self, source: Path | None, facts: dict):
        if self._facts is None or source is None or not Path(source).exists():
            return
        try:
            self._facts.put(source, facts)
        except (OSError, ValueError) as error:  # a read-only cache folder costs sampling again, nothing else
            log.warning("could not keep the preview colours in the cache: %s", error)

    # --- drawing ------------------------------------------------------------------------------------
    def render(self, latent: torch.Tensor, family: ModelFamily, vae=None) -> Image.Image:
        """latent: (C, h, w) as the sampler holds it. With a prepared `vae`, in that VAE's colours; without,
        with a TAESD for the family if there is one, else the published factors."""
        with self._lock:
            preview = self._vaes.get(vae) if vae is not None else None
        method = preview.method if preview is not None else "taesd"
        if method == "taesd":
            taesd = self._taesd(family)
            if taesd is not None:
                try:
                    return to_image(self._taesd_colours(taesd, latent[None])[0])
                except RuntimeError:  # a TAESD for another channel count
                    pass
        if method == "vae":
            with torch.no_grad():
                parameter = next(vae.parameters())
                decoded = vae.decode(to_vae_latents(vae, latent[None].to(parameter.device, parameter.dtype))).sample
            return to_image(decoded[0])
        if preview is not None and preview.fit is not None and preview.fit.channels == latent.shape[0]:
            return preview.fit.render(latent)
        return cheap_preview(latent, family)
