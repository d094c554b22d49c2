"""Load an upscaler model file (ESRGAN, Real-ESRGAN, SwinIR, DAT, HAT, ... : whatever spandrel knows).

The file is read by our own safe reader (safetensors, or torch.load(weights_only=True) on a file object),
never by spandrel's loader, so a pickle that carries code is refused before anything of it runs.
spandrel then recognises the architecture from the key layout and builds the network.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from backend.models.construction import ModelConstruction
from backend.models.weight_files import CheckpointError, read_weights, require_flat_tensors

UPSCALER_EXTENSIONS = (".pth", ".safetensors")
# Purposes an image-to-image upscaler may have; face models (FaceSR) need face detection and inpainting
# models need a mask, so neither can run as a plain upscaler.
ACCEPTED_PURPOSES = ("SR", "Restoration")


class UpscalerError(CheckpointError):
    """An upscaler that cannot be used; the message names the file and says why."""


@dataclass(frozen=True)
class UpscalerInfo:
    architecture: str  # spandrel's name, e.g. "ESRGAN", "RealESRGAN Compact", "SwinIR"
    scale: int


def load_upscaler(path: Path, construction: ModelConstruction):
    """An eval-mode spandrel ImageModelDescriptor on the CPU in float32, or UpscalerError. The network is built
    inside `construction`, the app's lock for building modules."""
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError, canonicalize_state_dict

    path = Path(path)
    raw = read_weights(path)  # CheckpointError (refused pickle, corrupt file) passes through unchanged
    if not isinstance(raw, dict):
        raise UpscalerError(f"{path.name} does not hold a dictionary of weights")
    try:
        state = canonicalize_state_dict(raw)  # unwraps "params_ema", "params", "state_dict", "module." ...
    except Exception as error:  # a hand-made dictionary can trip spandrel's unwrapping
        raise UpscalerError(f"{path.name} does not hold upscaler weights ({type(error).__name__}: {error})") \
            from None
    require_flat_tensors(state, path)
    try:
        with construction.building():
            descriptor = ModelLoader().load_from_state_dict(state)
    except UnsupportedModelError:
        raise UpscalerError(f"{path.name}: not an upscaler architecture spandrel recognises") from None
    except Exception as error:  # spandrel's loaders raise assorted errors for a damaged or hand-edited file
        raise UpscalerError(f"{path.name}: the weights do not fit the detected architecture "
                            f"({type(error).__name__}: {error})") from None
    _check_usable(descriptor, ImageModelDescriptor, path)
    return descriptor.eval()


def _check_usable(descriptor, image_descriptor_class, path: Path):
    if not isinstance(descriptor, image_descriptor_class) or descriptor.purpose not in ACCEPTED_PURPOSES:
        raise UpscalerError(f"{path.name} is a {descriptor.architecture.name} model for "
                            f"{getattr(descriptor, 'purpose', 'another task')}, not an image upscaler")
    if descriptor.purpose == "Restoration" and descriptor.scale != 1:
        raise UpscalerError(f"{path.name}: a restoration model with scale {descriptor.scale} is not supported")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise UpscalerError(f"{path.name} works on {descriptor.input_channels}-channel images; "
                            "only RGB upscalers are supported")


def describe(descriptor) -> UpscalerInfo:
    return UpscalerInfo(architecture=descriptor.architecture.name, scale=int(descriptor.scale))


def model_dtype(descriptor, wanted: torch.dtype) -> torch.dtype:
    """The services' dtype when the architecture supports it, float32 otherwise (some networks overflow
    in fp16)."""
    if wanted == torch.float16 and descriptor.supports_half:
        return wanted
    if wanted == torch.bfloat16 and descriptor.supports_bfloat16:
        return wanted
    return torch.float32
