"""The annotator networks built from files in models/ControlNetPreprocessor/: controlnet_aux's network classes,
filled with weights read by our safe reader (controlnet_aux's own loaders call torch.load on the file, which can run
code from a pickle, and may reach the Hugging Face hub; neither is used). Built networks are kept, the last few."""
from __future__ import annotations

import contextlib
import io
import threading
import types
import warnings
from collections import OrderedDict
from collections.abc import Callable
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


def normal_bae_network() -> torch.nn.Module:
    """Bae et al.'s surface-normal network (EfficientNet-B5 encoder, built empty from controlnet_aux's local copy:
    nothing is fetched), configured as the extension does."""
    nnet = quiet_import("controlnet_aux.normalbae.nets.NNET")
    options = types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet", sampling_ratio=0.4,
                                    importance_ratio=0.7)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its progress building the encoder
        return nnet.NNET(options)


def annotator_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an annotator file, never running code from it. Published files wrap theirs in "state_dict"
    (PiDiNet) or "model" (normal_bae's scannet.pt), some with DataParallel's "module." key prefix."""
    state = read_weights(path)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    require_flat_tensors(state, path)
    return without_prefix(state, "module.")


def without_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The published PiDiNet file was saved from a DataParallel model: its keys start with "module."."""
    return {key.removeprefix(prefix): value for key, value in state.items()}


class AnnotatorNetworks:
    """Networks built from annotator files, by file (path, size, mtime: a replaced file is read again)."""

    def __init__(self, keep: int = 3):
        self.keep = keep
        self._built: OrderedDict[tuple, torch.nn.Module] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path, build: Callable[[], torch.nn.Module], field: str = "module") -> torch.nn.Module:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns, build)
        with self._lock:
            if key in self._built:
                self._built.move_to_end(key)
                return self._built[key]
        network = self.load(path, build, field)
        with self._lock:
            self._built[key] = network
            while len(self._built) > self.keep:
                self._built.popitem(last=False)
        return network

    @staticmethod
    def load(path: Path, build: Callable[[], torch.nn.Module], field: str) -> torch.nn.Module:
        try:
            state = annotator_state(path)
        except CheckpointError as error:  # the same refusal, under the field that named the preprocessor
            raise CheckpointError(f"{path}: {error.message}", field) from error
        network = build()
        try:
            network.load_state_dict(state)
        except RuntimeError as error:  # missing/unexpected keys or shapes: another network's file
            first_line = str(error).splitlines()[1 if "\n" in str(error) else 0].strip()[:200]
            raise AnnotatorFileError(field, f"{path} does not hold the {type(network).__name__} network this "
                                            f"preprocessor needs ({first_line})") from error
        return network.float().eval()

    def clear(self):
        with self._lock:
            self._built.clear()
