"""The annotator networks built from files in models/ControlNetPreprocessor/: controlnet_aux's network classes,
filled with weights read by our safe reader (controlnet_aux's own loaders call torch.load on the file, which can run
code from a pickle, and may reach the Hugging Face hub; neither is used). Built networks are kept, the last few."""
from __future__ import annotations

import contextlib
import functools
import io
import threading
import types
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from backend.core.errors import UserError
from backend.models.weight_files import CheckpointError, read_weights, require_flat_tensors


class AnnotatorFileError(UserError):
    """An installed annotator file that does not hold the network it is named for."""


def quiet_import(module: str):
    """controlnet_aux's package import warns about optional extras (mediapipe) it does not need here."""
    import importlib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(module)


def lineart_network() -> torch.nn.Module:
    return quiet_import("controlnet_aux.lineart").Generator(3, 1, 3)


def lineart_anime_network() -> torch.nn.Module:
    """The anime line art U-Net (pix2pix's, 8 levels), with instance norms as the extension builds it."""
    norm = functools.partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)
    return quiet_import("controlnet_aux.lineart_anime").UnetGenerator(3, 1, 8, 64, norm_layer=norm, use_dropout=False)


def hed_network() -> torch.nn.Module:
    return quiet_import("controlnet_aux.hed").ControlNetHED_Apache2()


def pidinet_network() -> torch.nn.Module:
    return quiet_import("controlnet_aux.pidi.model").pidinet()


def teed_network() -> torch.nn.Module:
    return quiet_import("controlnet_aux.teed.ted").TED()


def mlsd_network() -> torch.nn.Module:
    return quiet_import("controlnet_aux.mlsd.models.mbv2_mlsd_large").MobileV2_MLSD_Large()


def midas_network() -> torch.nn.Module:
    """MiDaS DPT-Hybrid (ViT-B/16 on a ResNet-50 stem); its backbone is built empty, so timm fetches nothing."""
    dpt = quiet_import("controlnet_aux.midas.midas.dpt_depth")
    with warnings.catch_warnings():  # timm renames the backbone it is asked for ("deprecated model name")
        warnings.simplefilter("ignore")
        return dpt.DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True)


def leres_network() -> torch.nn.Module:
    """LeReS's relative depth network on a ResNeXt-101 (32x8d) encoder, built empty (nothing is fetched)."""
    return quiet_import("controlnet_aux.leres.leres.multi_depth_model_woauxi").RelDepthModel(backbone="resnext101")


def normal_bae_network() -> torch.nn.Module:
    """Bae et al.'s surface-normal network (EfficientNet-B5 encoder, built empty from controlnet_aux's local copy:
    nothing is fetched), configured as the extension does."""
    nnet = quiet_import("controlnet_aux.normalbae.nets.NNET")
    options = types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet", sampling_ratio=0.4,
                                    importance_ratio=0.7)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its progress building the encoder
        return nnet.NNET(options)


class OpenposeNetworks(torch.nn.Module):
    """openpose's body network, with the hand and face networks when the preprocessor draws those (each is
    published in its own file)."""

    def __init__(self, hand: bool = False, face: bool = False):
        super().__init__()
        model = quiet_import("controlnet_aux.open_pose.model")
        self.body = model.bodypose_model()
        self.hand = model.handpose_model() if hand else None
        self.face = quiet_import("controlnet_aux.open_pose.face").FaceNet() if face else None


def openpose_body_network() -> torch.nn.Module:
    return OpenposeNetworks()


def openpose_hand_network() -> torch.nn.Module:
    return OpenposeNetworks(hand=True)


def openpose_face_network() -> torch.nn.Module:
    return OpenposeNetworks(face=True)


def openpose_full_network() -> torch.nn.Module:
    return OpenposeNetworks(hand=True, face=True)


def annotator_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an annotator file, never running code from it. Published files wrap theirs in "state_dict"
    (PiDiNet), "model" (normal_bae's scannet.pt) or "depth_model" (LeReS's res101.pth), some with DataParallel's
    "module." key prefix."""
    state = read_weights(path)
    for wrapper in ("state_dict", "model", "depth_model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    require_flat_tensors(state, path)
    return without_prefix(state, "module.")


def without_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The published PiDiNet file was saved from a DataParallel model: its keys start with "module."."""
    return {key.removeprefix(prefix): value for key, value in state.items()}


def published_keys(_module: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return state


@dataclass(frozen=True)
class FilePart:
    """One file of a network built from several (openpose's body, hand and face): the submodule it fills, and how
    that submodule's keys are found among the file's."""

    submodule: str
    keys: Callable[[torch.nn.Module, dict[str, torch.Tensor]], dict[str, torch.Tensor]] = published_keys


def without_block_names(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """openpose's published body and hand files name each layer without the block holding it ("conv1_1.weight"
    for "model0.conv1_1.weight"; the layer names are unique), as controlnet_aux's util.transfer reads them. A key
    not found is left out, so loading names it."""
    keys = {key: key.partition(".")[2] for key in module.state_dict()}
    return {key: state[published] for key, published in keys.items() if published in state}


OPENPOSE_BODY, OPENPOSE_HAND = FilePart("body", without_block_names), FilePart("hand", without_block_names)
OPENPOSE_FACE = FilePart("face")


class AnnotatorNetworks:
    """Networks built from annotator files, by file (path, size, mtime: a replaced file is read again)."""

    def __init__(self, keep: int = 3):
        self.keep = keep
        self._built: OrderedDict[tuple, torch.nn.Module] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, paths: tuple[Path, ...], build: Callable, field: str = "module",
            parts: tuple[FilePart, ...] = (), sized_by_file: bool = False) -> torch.nn.Module:
        """The network `build` makes, filled from `paths`: the whole of it from one file, or with `parts`, each file
        filling its part. A network whose size is read from its file (`sized_by_file`) is built and filled by
        `build(paths, field)` itself."""
        stats = [(str(path), stat.st_size, stat.st_mtime_ns) for path in paths for stat in (path.stat(),)]
        key = (*stats, build, parts)
        with self._lock:
            if key in self._built:
                self._built.move_to_end(key)
                return self._built[key]
        network = build(paths, field).float().eval() if sized_by_file else self.load(paths, build, field, parts)
        with self._lock:
            self._built[key] = network
            while len(self._built) > self.keep:
                self._built.popitem(last=False)
        return network

    @staticmethod
    def load(paths: tuple[Path, ...], build: Callable[[], torch.nn.Module], field: str,
             parts: tuple[FilePart, ...] = ()) -> torch.nn.Module:
        network = build()
        for path, part in zip(paths, parts or (None,), strict=True):
            target = network.get_submodule(part.submodule) if part else network
            fill(target, path, part.keys if part else published_keys, field)
        return network.float().eval()

    def clear(self):
        with self._lock:
            self._built.clear()


def read_annotator_state(path: Path, field: str) -> dict[str, torch.Tensor]:
    """annotator_state, refused under `field` (the preprocessor that named the file) when it is not a plain tensor
    file."""
    try:
        return annotator_state(path)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error.message}", field) from error


def refuse_unless_fits(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], field: str, path: Path,
                       network_name: str, unknown: list[str] | tuple = (), optional: Callable[[str], bool] = None):
    """AnnotatorFileError naming the first tensor of `state` (already renamed) that `expected` does not have, the
    first one it lacks (unless `optional`), or the first of another shape: the file holds another network.
    `unknown`: original names the renaming could not place."""
    unknown = [*unknown, *(key for key in state if key not in expected)]
    missing = [key for key in expected if key not in state and not (optional and optional(key))]
    wrong = [key for key, value in state.items() if key in expected and expected[key].shape != value.shape]
    if unknown or missing or wrong:
        what = "unknown tensor" if unknown else "missing tensor" if missing else "tensor of another shape"
        raise AnnotatorFileError(field, f"{path} does not hold the {network_name} network this preprocessor needs "
                                        f"({what}: {(unknown or missing or wrong)[0]})")


def fill(network: torch.nn.Module, path: Path, keys: Callable, field: str):
    """`network`'s weights from `path`; a file that is not a plain tensor file, or holds another network, is
    refused under `field`."""
    state = read_annotator_state(path, field)
    try:
        network.load_state_dict(keys(network, state))
    except RuntimeError as error:  # missing/unexpected keys or shapes: another network's file
        first_line = str(error).splitlines()[1 if "\n" in str(error) else 0].strip()[:200]
        raise AnnotatorFileError(field, f"{path} does not hold the {type(network).__name__} network this "
                                        f"preprocessor needs ({first_line})") from error
