"""External VAEs (A1111's "SD VAE" setting): files in models/VAE/ (and `<checkpoint>.vae.*` beside a
checkpoint), loaded into the checkpoint's own VAE architecture and swapped in per job, never into the cache.

Choices, as in A1111: "Automatic" (a VAE file named after the checkpoint, else the checkpoint's own),
"None" (the checkpoint's own), or a file name.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from backend.models.construction import ModelConstruction
from backend.models.hashes import HashCache
from backend.models.loader import materialise
from backend.models.network_files import NetworkFile, NetworkFolder
from backend.models.weight_files import CheckpointError, load_state_dict

if TYPE_CHECKING:  # diffusers itself is imported when a VAE is loaded: it is slow to import
    from diffusers import AutoencoderKL

VAE_EXTENSIONS = (".safetensors", ".pt", ".ckpt", ".bin")
VAE_AUTOMATIC, VAE_NONE = "Automatic", "None"
CHECKPOINT_VAE_SUFFIXES = (".vae.safetensors", ".vae.pt", ".vae.ckpt")
LOSS_PREFIXES = ("loss.", "model_ema.")  # training leftovers some VAE files carry


def vae_weights(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """A VAE file's tensors (original or diffusers layout) under diffusers' names."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    state = {key: value for key, value in state.items() if not key.startswith(LOSS_PREFIXES)}
    if any(key.startswith("encoder.down_blocks.") for key in state):
        return state
    return convert_ldm_vae_checkpoint(state, dict(config))


class VaeLibrary:
    def __init__(self, folder: Path, checkpoints_dir: Path, hashes: HashCache, max_loaded: int = 2,
                 construction: ModelConstruction | None = None):
        self.construction = construction or ModelConstruction()
        self.files = NetworkFolder(folder, VAE_EXTENSIONS)
        self.checkpoints_dir = Path(checkpoints_dir)
        self.hashes = hashes
        self.max_loaded = max_loaded
        self._lock = threading.Lock()
        self._loaded: OrderedDict[tuple, AutoencoderKL] = OrderedDict()

    def refresh(self):
        self.files.refresh()

    def choices(self) -> list[str]:
        return [VAE_AUTOMATIC, VAE_NONE, *(entry.file_name for entry in self.files.entries)]

    def _beside_checkpoints(self) -> list[NetworkFile]:
        if not self.checkpoints_dir.is_dir():
            return []
        return [NetworkFile(path.name.split(".vae.")[0], path) for path in sorted(self.checkpoints_dir.rglob("*"))
                if path.is_file() and path.name.lower().endswith(CHECKPOINT_VAE_SUFFIXES)]

    def resolve(self, choice: str, checkpoint_path: Path | None) -> NetworkFile | None:
        """The VAE file a choice means for this checkpoint; None = the checkpoint's own VAE."""
        if choice == VAE_NONE:
            return None
        if choice == VAE_AUTOMATIC:
            if checkpoint_path is None:
                return None
            stem = checkpoint_path.name.rsplit(".", 1)[0]
            for entry in [*self._beside_checkpoints(), *self.files.entries]:
                if entry.file_name.startswith(stem):
                    return entry
            return None
        entry = self.files.find(choice)
        if entry is None:
            raise CheckpointError(f"no VAE named {choice!r} in {self.files.folder}; choose one of {self.choices()}")
        return entry

    def load(self, entry: NetworkFile, like: AutoencoderKL) -> AutoencoderKL:
        """`entry`'s weights in a VAE built like the checkpoint's (same config, device and dtype)."""
        key = (str(entry.path), entry.path.stat().st_mtime, str(dict(like.config)), like.device, like.dtype)
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
        try:
            weights = vae_weights(load_state_dict(entry.path), like.config)
        except KeyError as error:
            raise CheckpointError(f"{entry.file_name} is not a VAE for this model (no {error})") from None
        from accelerate import init_empty_weights
        from diffusers import AutoencoderKL

        with self.construction.building(), init_empty_weights():
            vae = AutoencoderKL.from_config(like.config)
        vae = materialise(vae, weights, like.dtype, f"VAE {entry.file_name}").to(like.device)
        with self._lock:
            self._loaded[key] = vae
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)
        return vae

    def short_hash(self, entry: NetworkFile) -> str:
        """A1111's `VAE hash`: the file's sha256, first 10 hex digits."""
        return self.hashes.sha256(entry.path)[:10]
