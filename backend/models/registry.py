"""The checkpoints a user can pick: files and diffusers folders under the checkpoint folder, plus the
built-in demo model when there is nothing else."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from backend.models.builtin_model import BUILTIN_LABEL, builtin_checkpoint
from backend.models.hashes import HashCache
from backend.models.weight_files import declared_resolution

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf")
UNET_SUFFIXES = (".gguf",)  # ComfyUI's models/unet: quantized Flux/SD3 transformers


@dataclass(frozen=True)
class CheckpointEntry:
    name: str  # path relative to the checkpoint folder, as A1111 shows it
    path: Path
    short_hash: str | None  # None for diffusers folders and hub ids (no single file to hash)
    sha256: str | None = None
    builtin: bool = False
    resolution: tuple[int, int] | None = None  # the size the model was trained at, when its file says


    @property
    def model_name(self) -> str:
        """A1111's `model_name`: the file name without extension."""
        return Path(self.name).stem if self.path.is_file() else self.name

    @property
    def title(self) -> str:
        return f"{self.name} [{self.short_hash}]" if self.short_hash else self.name

    @property
    def label(self) -> str:
        return f"{self.title} ({BUILTIN_LABEL})" if self.builtin else self.title

    def matches(self, query: str) -> bool:
        # A1111's short title ("name [hash]") is how its infotext names a refiner or hires checkpoint
        short_title = f"{self.model_name} [{self.short_hash}]" if self.short_hash else None
        return query in (self.title, self.name, self.model_name, self.short_hash, self.sha256, str(self.path),
                         short_title)


class ModelRegistry:
    def __init__(self, checkpoints_dir: Path, hashes: HashCache, unet_dir: Path | None = None):
        """`unet_dir`: a second folder whose GGUF transformers are listed too (as "unet/<name>")."""
        self.checkpoints_dir = Path(checkpoints_dir)
        self.unet_dir = Path(unet_dir) if unet_dir else None
        self.hashes = hashes
        self._entries: tuple[CheckpointEntry, ...] = ()
        self._lock = threading.Lock()  # the UI and the preload thread may refresh at the same time

    def _file_entry(self, path: Path, name: str, builtin: bool = False) -> CheckpointEntry:
        sha = self.hashes.sha256(path)
        return CheckpointEntry(name=name, path=path, short_hash=sha[:10], sha256=sha, builtin=builtin,
                               resolution=declared_resolution(path))

    def refresh(self) -> tuple[CheckpointEntry, ...]:
        with self._lock:
            self._entries = self._scan()
            return self._entries

    def _scan(self) -> tuple[CheckpointEntry, ...]:
        entries = []
        root = self.checkpoints_dir
        if root.is_dir():
            folders = sorted(p.parent for p in root.rglob("model_index.json"))
            for folder in folders:
                entries.append(CheckpointEntry(name=folder.relative_to(root).as_posix(), path=folder, short_hash=None))
            for path in sorted(root.rglob("*")):
                if (path.is_file() and path.suffix.lower() in CHECKPOINT_SUFFIXES
                        and not any(f in path.parents for f in folders) and not path.name.startswith(".")):
                    entries.append(self._file_entry(path, path.relative_to(root).as_posix()))
        if self.unet_dir is not None and self.unet_dir.is_dir() and self.unet_dir != root:
            for path in sorted(self.unet_dir.rglob("*")):
                if path.is_file() and path.suffix.lower() in UNET_SUFFIXES and not path.name.startswith("."):
                    entries.append(self._file_entry(path, "unet/" + path.relative_to(self.unet_dir).as_posix()))
        if not entries:
            builtin = builtin_checkpoint()
            entries.append(self._file_entry(builtin, builtin.name, builtin=True))
        return tuple(entries)

    @property
    def entries(self) -> tuple[CheckpointEntry, ...]:
        return self._entries or self.refresh()

    def find(self, query: str) -> CheckpointEntry | None:
        for entry in self.entries:
            if entry.matches(query):
                return entry
        return None
