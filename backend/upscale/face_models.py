"""Face restoration model files: GFPGAN (and other face networks spandrel knows, e.g. RestoreFormer) in
models/GFPGAN/, CodeFormer in models/Codeformer/, as A1111 keeps them.

Files are read by our safe reader (a pickle that carries code is refused before anything of it runs) and built
by spandrel. CodeFormer's network lives only in spandrel_extra_arches, whose CodeFormer code is under the S-Lab
License 1.0 (non-commercial use only); this project does not ship it, so a CodeFormer file is recognised and
refused with that reason instead of failing obscurely.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from backend.models.construction import ModelConstruction
from backend.models.weight_files import CheckpointError, read_weights, require_flat_tensors

FACE_MODEL_EXTENSIONS = (".pth", ".safetensors")
GFPGAN_FOLDER = "GFPGAN"  # under the models folder, as in A1111
CODEFORMER_FOLDER = "Codeformer"
# facexlib keeps its detector and parsing weights in models/GFPGAN too; they are not restorers.
HELPER_PREFIXES = ("detection_", "parsing_")
CODEFORMER_KEYS = ("position_emb", "quantize.embedding.weight", "idx_pred_layer.0.weight")
CODEFORMER_UNAVAILABLE = ("CodeFormer's network is only available in spandrel_extra_arches under the S-Lab "
                          "License 1.0 (non-commercial use only), so this version does not include it; use GFPGAN "
                          "(put GFPGANv1.4.pth in {folder})")


class FaceModelError(CheckpointError):
    """A face restoration model that cannot be used; the message names the file and says why."""


@dataclass(frozen=True)
class FaceModelFile:
    path: Path
    architecture: str  # spandrel's name, e.g. "GFPGAN", "RestoreFormer"


def face_model_files(folder: Path) -> list[Path]:
    """Candidate restorer files in `folder`: GFPGAN*-named files first (newest version first), then the rest."""
    if not folder.is_dir():
        return []
    files = [path for path in folder.iterdir() if path.is_file() and path.suffix.lower() in FACE_MODEL_EXTENSIONS
             and not path.name.startswith(".") and not path.name.startswith(HELPER_PREFIXES)]
    named = sorted((path for path in files if "gfpgan" in path.name.lower()), key=lambda p: p.name, reverse=True)
    return named + sorted(path for path in files if path not in named)


def looks_like_codeformer(state: dict) -> bool:
    return all(key in state for key in CODEFORMER_KEYS)


def load_face_model(path: Path, construction: ModelConstruction):
    """An eval-mode spandrel descriptor of a face restoration network (512x512 in, 512x512 out, values in
    -1..1), on the CPU in float32; FaceModelError when the file is no usable face model."""
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError, canonicalize_state_dict

    path = Path(path)
    raw = read_weights(path)  # CheckpointError (refused pickle, corrupt file) passes through unchanged
    if not isinstance(raw, dict):
        raise FaceModelError(f"{path.name} does not hold a dictionary of weights")
    try:
        state = canonicalize_state_dict(raw)  # unwraps "params_ema", "params", "state_dict" ...
    except Exception as error:  # a hand-made dictionary can trip spandrel's unwrapping
        raise FaceModelError(f"{path.name} does not hold face model weights ({type(error).__name__})") from None
    require_flat_tensors(state, path)
    if looks_like_codeformer(state):
        raise FaceModelError(f"{path.name} is a CodeFormer model: "
                             + CODEFORMER_UNAVAILABLE.format(folder=f"models/{GFPGAN_FOLDER}"))
    try:
        with construction.building():
            descriptor = ModelLoader().load_from_state_dict(state)
    except UnsupportedModelError:
        raise FaceModelError(f"{path.name}: not a face restoration architecture spandrel recognises") from None
    except Exception as error:  # spandrel's loaders raise assorted errors for a damaged or hand-edited file
        raise FaceModelError(f"{path.name}: the weights do not fit the detected architecture "
                             f"({type(error).__name__}: {error})") from None
    if not isinstance(descriptor, ImageModelDescriptor) or descriptor.purpose != "FaceSR":
        raise FaceModelError(f"{path.name} is a {descriptor.architecture.name} model for "
                             f"{getattr(descriptor, 'purpose', 'another task')}, not a face restorer")
    return descriptor.eval()
