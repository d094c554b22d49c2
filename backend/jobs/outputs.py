"""Saving images as A1111 does: <outputs>/<kind>-images/YYYY-MM-DD/NNNNN-SEED.png with infotext
(NNNNN.png for upscaled images, which have no seed of their own).

Writes go to a temporary file in the same folder, are flushed to disk, then renamed into place, so a
crash never leaves a half-written PNG under a real name; a failed write removes its temporary file, and a
full disk is reported as DiskFullError naming the folder.
"""
from __future__ import annotations

import datetime
import errno
import io
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, PngImagePlugin

from backend.core.errors import UserError

log = logging.getLogger(__name__)
NUMBERED_FILE = re.compile(r"^(\d+)(?:-|\.png$)")
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


class DiskFullError(UserError, OSError):
    """No space (or quota) left in the outputs folder; the message names the folder. (An OSError too, as the
    write that failed.)"""

    def __init__(self, folder: Path, cause: OSError):
        OSError.__init__(self, cause.errno, f"disk full while saving to {folder}: {cause.strerror or cause}")
        self.field, self.message = None, self.strerror

    def __str__(self) -> str:
        return self.strerror  # without OSError's "[Errno 28]" prefix: the message is for the user


class OutputStore:
    def __init__(self, root: Path, clock=datetime.date.today):
        self.root = Path(root)
        self._clock = clock
        self._lock = threading.Lock()  # one numbering sequence per folder, even with several writers
        self._local = threading.local()  # per thread: lists collecting the paths saved (see saves_undone_on)

    def folder(self, kind: str) -> Path:
        return self.root / f"{kind}-images" / self._clock().isoformat()

    @staticmethod
    def _next_number(folder: Path, prefix: str = "") -> int:
        pattern = re.compile(rf"^{re.escape(prefix)}(\d+)(?:-|\.png$)") if prefix else NUMBERED_FILE
        numbers = [int(m.group(1)) for name in os.listdir(folder) if (m := pattern.match(name))]
        return max(numbers, default=-1) + 1

    def save(self, image: Image.Image, kind: str, seed: int, infotext: str) -> Path:
        return self.save_png(encode_png(image, infotext), kind, seed)

    def save_png(self, png: bytes, kind: str, seed: int | None) -> Path:
        folder = self.folder(kind)
        try:
            path = self._write_numbered(png, folder, "" if seed is None else f"-{seed}")
        except OSError as error:
            if error.errno in DISK_FULL_ERRNOS:
                raise DiskFullError(folder, error) from error
            raise
        for collector in self._collectors():
            collector.append(path)
        return path

    def save_grid_png(self, png: bytes, kind: str, basename: str = "grid") -> Path:
        """A grid (the Script menu's prompt matrix, X/Y/Z plot): <outputs>/<kind>-grids/YYYY-MM-DD/
        <basename>-NNNNN.png, as A1111 names them (it numbers per basename)."""
        folder = self.root / f"{kind}-grids" / self._clock().isoformat()
        try:
            path = self._write_numbered(png, folder, "", prefix=f"{basename}-")
        except OSError as error:
            if error.errno in DISK_FULL_ERRNOS:
                raise DiskFullError(folder, error) from error
            raise
        for collector in self._collectors():
            collector.append(path)
        return path

    def write_png_to(self, png: bytes, path: Path) -> Path:
        """`png` written atomically to exactly `path` (a folder the user chose, e.g. img2img Batch's output
        folder), replacing a file of that name; the folder is created when missing."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with self._lock:
                _write_atomically(png, path)
        except OSError as error:
            if error.errno in DISK_FULL_ERRNOS:
                raise DiskFullError(path.parent, error) from error
            raise
        for collector in self._collectors():
            collector.append(path)
        return path

    def _write_numbered(self, png: bytes, folder: Path, suffix: str, prefix: str = "") -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            path = folder / f"{prefix}{self._next_number(folder, prefix):05d}{suffix}.png"
            _write_atomically(png, path)
        return path

    @contextmanager
    def saves_undone_on(self, should_undo: Callable[[BaseException], bool]):
        """Files this thread saves inside the block are deleted again when the block raises an error that
        `should_undo` accepts: a job attempt that will be retried must not leave duplicates behind."""
        saved: list[Path] = []
        collectors = self._collectors()
        collectors.append(saved)
        try:
            yield saved
        except BaseException as error:
            if should_undo(error):
                self._discard(saved)
            raise
        finally:
            collectors.pop()  # blocks nest within one thread, so ours is the last one

    def _collectors(self) -> list[list[Path]]:
        if not hasattr(self._local, "collectors"):
            self._local.collectors = []
        return self._local.collectors

    @staticmethod
    def _discard(paths: list[Path]):
        for path in paths:
            try:
                path.unlink(missing_ok=True)
            except OSError as error:
                log.warning("could not remove %s, saved by a failed attempt: %s", path, error)
        if paths:
            log.info("removed %d image(s) saved by the failed attempt", len(paths))


def _write_atomically(data: bytes, path: Path):
    """A temporary file beside `path`, synced, then renamed over it: readers see the old file or the whole new one."""
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=".partial-", suffix=path.suffix)
    try:
        with os.fdopen(handle, "wb") as temp_file:
            temp_file.write(data)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def encode_png(image: Image.Image, infotext: str | None, extra_text: dict[str, str] | None = None) -> bytes:
    """PNG bytes with the infotext in the `parameters` text chunk, as A1111 writes them; `extra_text` adds
    more text chunks (A1111's upscaler writes "postprocessing" and "extras")."""
    info = PngImagePlugin.PngInfo()
    if infotext:
        info.add_text("parameters", infotext)
    for key, value in (extra_text or {}).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


