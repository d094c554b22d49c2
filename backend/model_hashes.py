"""A1111's checkpoint hash: sha256 of the whole file, first 10 hex digits shown.

Hashing a multi-GB file takes seconds, so results are cached on disk by path, size and mtime.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from backend.file_facts_cache import FileFactsCache


class HashCache:
    def __init__(self, cache_file: Path):
        self._facts = FileFactsCache(cache_file)

    def sha256(self, path: Path) -> str:
        cached = self._facts.get(path)
        if cached and "sha256" in cached:
            return cached["sha256"]
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        value = digest.hexdigest()
        self._facts.put(path, {"sha256": value})
        return value

    def short_hash(self, path: Path) -> str:
        return self.sha256(path)[:10]
