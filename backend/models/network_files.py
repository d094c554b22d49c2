"""The files of one add-on folder (LoRAs, embeddings, VAEs): listed by name, found by the name a prompt or a
dropdown uses, with the preview picture A1111 users keep beside them."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

PREVIEW_SUFFIXES = (".png", ".preview.png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class NetworkFile:
    name: str  # the file name without its extension: what `<lora:name:1>` or an embedding's prompt word says
    path: Path
    preview: Path | None = None

    @property
    def file_name(self) -> str:
        return self.path.name


def _preview_of(path: Path) -> Path | None:
    stem = path.with_suffix("")
    for suffix in PREVIEW_SUFFIXES:
        candidate = stem.with_name(stem.name + suffix)
        if candidate.is_file():
            return candidate
    return None


class NetworkFolder:
    """Files with the given extensions anywhere under `folder` (sub-folders are how users sort them)."""

    def __init__(self, folder: Path, extensions: tuple[str, ...]):
        self.folder = Path(folder)
        self.extensions = extensions
        self._lock = threading.Lock()
        self._entries: tuple[NetworkFile, ...] | None = None

    def refresh(self) -> tuple[NetworkFile, ...]:
        found = []
        if self.folder.is_dir():
            for path in sorted(self.folder.rglob("*"), key=lambda p: str(p).lower()):
                if path.is_file() and path.suffix.lower() in self.extensions and not path.name.startswith("."):
                    found.append(NetworkFile(path.stem, path, _preview_of(path)))
        with self._lock:
            self._entries = tuple(found)
        return self._entries

    @property
    def entries(self) -> tuple[NetworkFile, ...]:
        with self._lock:
            entries = self._entries
        return entries if entries is not None else self.refresh()

    def find(self, name: str) -> NetworkFile | None:
        """By exact name first, then ignoring case (prompts get typed by hand), then by file name."""
        entries = self.entries
        for matches in (lambda e: e.name == name, lambda e: e.name.lower() == name.lower(),
                        lambda e: e.file_name == name):
            for entry in entries:
                if matches(entry):
                    return entry
        return None
