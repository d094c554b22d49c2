"""A1111's file hashes: sha256 of the whole file (checkpoints, VAEs, embeddings) and the "addnet" hash of
a safetensors file's tensor data without its header (LoRAs, so editing metadata keeps the hash).

Hashing a multi-GB file takes seconds, so results are cached on disk by path, size and mtime.
"""
from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from backend.models.file_facts import FileFactsCache


class HashCache:
    def __init__(self, cache_file: Path):
        self._facts = FileFactsCache(cache_file)

    def sha256(self, path: Path) -> str:
        return self._cached(path, "sha256", lambda: _digest(path, skip=0))

    def addnet_hash(self, path: Path) -> str:
        """sha256 of everything after a safetensors file's header (A1111's LoRA hash); the whole file's
        sha256 for other formats."""
        def compute():
            with open(path, "rb") as handle:
                head = handle.read(9)
            if len(head) == 9 and head[8:9] == b"{":
                return _digest(path, skip=8 + struct.unpack("<Q", head[:8])[0])
            return _digest(path, skip=0)
        return self._cached(path, "addnet", compute)

    def _cached(self, path: Path, kind: str, compute) -> str:
        facts = self._facts.get(path) or {}
        if kind not in facts:
            facts[kind] = compute()
            self._facts.put(path, facts)
        return facts[kind]

    def short_hash(self, path: Path) -> str:
        return self.sha256(path)[:10]


def _digest(path: Path, skip: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(skip)
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
