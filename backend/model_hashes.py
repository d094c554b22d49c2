"""A1111's checkpoint hash: sha256 of the whole file, first 10 hex digits shown.

Hashing a multi-GB file takes seconds, so results are cached on disk by path, size and mtime.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path


class HashCache:
    def __init__(self, cache_file: Path):
        self.cache_file = Path(cache_file)
        self._lock = threading.Lock()
        self._entries: dict | None = None

    def _load(self) -> dict:
        if self._entries is None:
            try:
                self._entries = json.loads(self.cache_file.read_text())
            except (OSError, ValueError):
                self._entries = {}
        return self._entries

    def sha256(self, path: Path) -> str:
        path = Path(path).resolve()
        stat = path.stat()
        key = str(path)
        with self._lock:
            entry = self._load().get(key)
            if entry and entry["size"] == stat.st_size and entry["mtime"] == stat.st_mtime:
                return entry["sha256"]
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        value = digest.hexdigest()
        with self._lock:
            self._load()[key] = {"size": stat.st_size, "mtime": stat.st_mtime, "sha256": value}
            self._save()
        return value

    def short_hash(self, path: Path) -> str:
        return self.sha256(path)[:10]

    def _save(self):
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        temp = self.cache_file.with_suffix(".tmp")
        temp.write_text(json.dumps(self._entries, indent=1))
        os.replace(temp, self.cache_file)
