"""Textual-inversion embeddings: files in `embeddings/` whose name, written in a prompt, stands for the
learned vectors inside. Read with the safe weight reader (safetensors, or weights-only torch.load).

Formats met in the wild:
- A1111 `.pt`: {"string_to_param": {"*": tensor(n, width)}, "name": ..., "step": ..., ...}
- `.safetensors` for SD1.x/SD2.x: {"emb_params": tensor(n, width)}
- `.safetensors` for SDXL: {"clip_l": tensor(n, 768), "clip_g": tensor(n, 1280)}
- diffusers `.bin`: {"<token>": tensor(width)}
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from backend.models.hashes import HashCache
from backend.models.network_files import NetworkFile, NetworkFolder
from backend.models.weight_files import CheckpointError, read_weights

EMBEDDING_EXTENSIONS = (".safetensors", ".pt", ".bin")
SDXL_KEYS = ("clip_l", "clip_g")  # vectors for text encoder 1 and 2


@dataclass(frozen=True)
class Embedding:
    name: str
    path: Path
    vectors: tuple[torch.Tensor, ...]  # one (n, width) tensor per text encoder it was made for (1, or 2 for SDXL)
    step: int | None = None

    @property
    def length(self) -> int:
        """How many prompt tokens the embedding takes."""
        return self.vectors[0].shape[0]

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(v.shape[-1] for v in self.vectors)


def read_embedding(path: Path) -> tuple[tuple[torch.Tensor, ...], int | None]:
    """The vectors of an embedding file; CheckpointError if it is not one."""
    data = read_weights(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path.name} is not a textual-inversion embedding")
    step = data.get("step") if isinstance(data.get("step"), int) else None
    if all(key in data for key in SDXL_KEYS):
        vectors = tuple(data[key] for key in SDXL_KEYS)
    elif isinstance(data.get("string_to_param"), dict) and data["string_to_param"]:
        vectors = (next(iter(data["string_to_param"].values())),)
    elif "emb_params" in data:
        vectors = (data["emb_params"],)
    else:
        tensors = [value for value in data.values() if isinstance(value, torch.Tensor)]
        if len(tensors) != 1:
            raise CheckpointError(f"{path.name} is not a textual-inversion embedding (no embedding vectors found)")
        vectors = (tensors[0],)
    if not all(isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() in (1, 2) for v in vectors):
        raise CheckpointError(f"{path.name} is not a textual-inversion embedding (its vectors are malformed)")
    vectors = tuple((v.unsqueeze(0) if v.dim() == 1 else v).detach().float() for v in vectors)
    if len({v.shape[0] for v in vectors}) != 1:
        raise CheckpointError(f"{path.name}: its two vector sets differ in length")
    return vectors, step


class EmbeddingLibrary:
    """The embeddings folder, with each file read once (again only when it changes on disk)."""

    def __init__(self, folder: Path, hashes: HashCache):
        self.files = NetworkFolder(folder, EMBEDDING_EXTENSIONS)
        self.hashes = hashes
        self._lock = threading.Lock()
        self._loaded: dict[Path, tuple[float, Embedding | CheckpointError]] = {}

    def refresh(self):
        self.files.refresh()

    def load(self, entry: NetworkFile) -> Embedding:
        mtime = entry.path.stat().st_mtime
        with self._lock:
            cached = self._loaded.get(entry.path)
        if cached is None or cached[0] != mtime:
            try:
                vectors, step = read_embedding(entry.path)
                cached = (mtime, Embedding(entry.name, entry.path, vectors, step))
            except CheckpointError as error:
                cached = (mtime, error)
            with self._lock:
                self._loaded[entry.path] = cached
        if isinstance(cached[1], CheckpointError):
            raise cached[1]
        return cached[1]

    def all(self) -> tuple[list[Embedding], dict[str, str]]:
        """Every readable embedding, and for the others the reason (name -> message)."""
        loaded, failed = [], {}
        for entry in self.files.entries:
            try:
                loaded.append(self.load(entry))
            except CheckpointError as error:
                failed[entry.name] = str(error)
        return loaded, failed

    def short_hash(self, embedding: Embedding) -> str:
        """A1111's `TI hashes` value: the file's sha256, first 12 hex digits."""
        return self.hashes.sha256(embedding.path)[:12]
