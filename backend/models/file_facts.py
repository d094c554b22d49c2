"""Facts about files that are slow to find (a checkpoint's sha256, an upscaler's architecture), kept in a
JSON file by resolved path and trusted while the file's size and mtime are unchanged."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path


class FileFactsCache:
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

    def get(self, path: Path) -> dict | None:
        """The facts stored for `path`, or None when there are none or the file changed since."""
        path = Path(path).resolve()
        stat = path.stat()
        with self._lock:
            entry = self._load().get(str(path))
        if entry and entry.get("size") == stat.st_size and entry.get("mtime") == stat.st_mtime:
            return {key: value for key, value in entry.items() if key not in ("size", "mtime")}
        return None

    def put(self, path: Path, facts: dict, save: bool = True):
        path = Path(path).resolve()
        stat = path.stat()
        with self._lock:
            self._load()[str(path)] = {"size": stat.st_size, "mtime": stat.st_mtime, **facts}
            if save:
                self._save()

    def save(self):
        with self._lock:
            self._save()

    def _save(self):
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        temp = self.cache_file.with_suffix(".tmp")
        temp.write_text(json.dumps(self._load(), indent=1))
        os.replace(temp, self.cache_file)
