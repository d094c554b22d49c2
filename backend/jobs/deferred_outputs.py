"""Saving on behalf of another process: a pool worker makes the images, the server saves them.

A worker's generator writes through a `DeferredOutputStore`: it decides folders, names and bytes exactly as the
server's `OutputStore` would (same options, same outputs path), but instead of writing it records each write and
answers a placeholder path. The server then performs the writes with its own store (`perform_writes`), so there
is one numbering and one history, and puts the real paths into the result (`with_saved_paths`). A worker that dies
mid-job has written nothing, so a retried job is never saved twice.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from backend.core.requests import GenerationResult, ImageResult
from backend.jobs.outputs import OutputStore

PLACEHOLDER_PREFIX = ".pending-save-"


@dataclass(frozen=True)
class PendingWrite:
    """One file the server is to write: `numbered` in `folder` (NNNNN<suffix><extension>, numbered per `prefix`),
    or else at exactly `path`; with a .txt `sidecar` first when given."""
    placeholder: str
    data: bytes
    numbered: bool
    folder: str = ""
    suffix: str = ""
    extension: str = ".png"
    prefix: str = ""
    path: str = ""
    sidecar: bytes | None = None


class DeferredOutputStore(OutputStore):
    """An OutputStore that records its writes instead of making them (one job at a time per worker)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pending: list[PendingWrite] = []
        self._pending_lock = threading.Lock()

    def take_writes(self) -> list[PendingWrite]:
        """The writes recorded since the last call, in order; the record starts empty again."""
        with self._pending_lock:
            writes, self._pending = self._pending, []
        return writes

    def _placeholder(self, where: Path, ending: str, **fields) -> Path:
        with self._pending_lock:
            placeholder = where / f"{PLACEHOLDER_PREFIX}{len(self._pending)}{ending}"
            self._pending.append(PendingWrite(placeholder=str(placeholder), **fields))
        return placeholder

    def _write_numbered(self, data: bytes, folder: Path, suffix: str, extension: str = ".png",
                        sidecar: bytes | None = None, prefix: str = "") -> Path:
        return self._placeholder(folder, extension, data=data, numbered=True, folder=str(folder), suffix=suffix,
                                 extension=extension, prefix=prefix, sidecar=sidecar)

    def _write_named(self, data: bytes, path: Path, sidecar: bytes | None = None) -> Path:
        return self._placeholder(path.parent, path.suffix, data=data, numbered=False, path=str(path),
                                 sidecar=sidecar)

    def write_png_to(self, png: bytes, path: Path) -> Path:
        path = Path(path)
        return self._placeholder(path.parent, path.suffix, data=png, numbered=False, path=str(path))

    @staticmethod
    def _discard(paths: list[Path]):
        """A failed attempt's writes were never made; the worker drops them with take_writes."""


def perform_writes(outputs: OutputStore, writes: list[PendingWrite]) -> dict[str, str]:
    """Make the recorded writes with the server's store, in order; returns placeholder -> real path."""
    saved = {}
    for write in writes:
        if write.numbered:
            path = outputs.write_numbered(write.data, Path(write.folder), write.suffix, write.extension,
                                          write.sidecar, write.prefix)
        elif write.sidecar is None:
            path = outputs.write_png_to(write.data, Path(write.path))
        else:
            path = outputs.write_named(write.data, Path(write.path), write.sidecar)
        saved[write.placeholder] = str(path)
    return saved


def with_saved_paths(result: GenerationResult, saved: dict[str, str]) -> GenerationResult:
    """The result with each placeholder path replaced by where the server saved the file."""
    def image(item: ImageResult | None) -> ImageResult | None:
        if item is None or item.path not in saved:
            return item
        return item.model_copy(update={"path": saved[item.path]})
    return result.model_copy(update={"images": [image(item) for item in result.images], "grid": image(result.grid)})
