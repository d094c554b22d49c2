"""Saving images as A1111 does: by default <outputs>/<kind>-images/YYYY-MM-DD/NNNNN-SEED.png with infotext
(NNNNN.png for upscaled images, which have no seed of their own); the user options choose the format (png, jpg,
webp), the folders (outdir_*, directories_filename_pattern), the names (samples_filename_pattern) and a .txt
sidecar with the infotext.

Writes go to a temporary file in the same folder, are flushed to disk, then renamed into place, so a
crash never leaves a half-written PNG under a real name; a failed write removes its temporary file, and a
full disk is reported as DiskFullError naming the folder.
"""
from __future__ import annotations

import dataclasses
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
from backend.core.options import Options
from backend.jobs.file_names import ImageFacts, file_stem, folder_parts

log = logging.getLogger(__name__)
NUMBERED_FILE = re.compile(r"^(\d+)(?=[-.]|$)")
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
    def __init__(self, root: Path, clock=datetime.date.today, options: Callable[[], Options] = Options,
                 folders_inside_root: bool = False):
        """`options()`: the user options in effect (saving format, names, folders); `folders_inside_root`: an
        outdir_* option may not point outside `root` (the server is reachable from other machines)."""
        self.root = Path(root)
        self._clock = clock
        self._options = options
        self.folders_inside_root = folders_inside_root
        self._lock = threading.Lock()  # one numbering sequence per folder, even with several writers
        self._local = threading.local()  # per thread: lists collecting the paths saved (see saves_undone_on)

    def options(self) -> Options:
        """The user options in effect now (a job may run with its own copy: override_settings)."""
        return self._options()

    def kind_folder(self, kind: str, options: Options | None = None) -> Path:
        """Where images of a kind go before any dated sub-folder: outdir_samples, else outdir_<kind>_samples, else
        <root>/<kind>-images."""
        options = options or self._options()
        chosen = options.outdir_samples or getattr(options, f"outdir_{kind}_samples", "")
        return self.resolve_folder(chosen, f"outdir_{kind}_samples") if chosen else self.root / f"{kind}-images"

    def resolve_folder(self, chosen: str, key: str) -> Path:
        """An outdir_* value as a folder: relative to the outputs root; outside it only when the server is not
        reachable from other machines."""
        folder = (self.root / Path(chosen).expanduser()).resolve()
        if self.folders_inside_root and not folder.is_relative_to(self.root.resolve()):
            raise UserError(key, f"must be a folder inside {self.root} while the server is reachable from other "
                                 "machines (--listen/--share)")
        return folder

    def check_folders(self, options: Options):
        """Raises UserError naming the outdir_* option that points where images may not be saved."""
        for key in ("outdir_samples", "outdir_txt2img_samples", "outdir_img2img_samples", "outdir_extras_samples",
                    "outdir_grids", "outdir_txt2img_grids", "outdir_img2img_grids"):
            if getattr(options, key):
                self.resolve_folder(getattr(options, key), key)

    def folder(self, kind: str) -> Path:
        return self.kind_folder(kind) / self._clock().isoformat()

    @staticmethod
    def _next_number(folder: Path, prefix: str = "") -> int:
        pattern = re.compile(rf"^{re.escape(prefix)}(\d+)(?:-|\.)") if prefix else NUMBERED_FILE
        numbers = [int(m.group(1)) for name in os.listdir(folder) if (m := pattern.match(name))]
        return max(numbers, default=-1) + 1

    def save(self, image: Image.Image, kind: str, seed: int, infotext: str) -> Path:
        return self.save_png(encode_png(image, infotext), kind, seed)

    def save_png(self, png: bytes, kind: str, seed: int | None) -> Path:
        """PNG bytes as they are, in the kind's dated folder, as NNNNN[-seed].png."""
        folder = self.folder(kind)
        return self._saved(lambda: self._write_numbered(png, folder, "" if seed is None else f"-{seed}", ".png"),
                           folder)

    def save_image(self, image: Image.Image, kind: str, infotext: str | None, facts: ImageFacts | None = None,
                   extra_text: dict[str, str] | None = None, options: Options | None = None) -> Path:
        """Save as the options say (`options`: the job's, default those in effect): format (png/jpg/webp, infotext
        in a PNG chunk or EXIF UserComment), folder (outdir_*, save_to_dirs + directories_filename_pattern), name
        (samples_filename_pattern; `facts` None: the number only) and the save_txt sidecar."""
        options = options or self._options()
        facts = dataclasses.replace(facts, now=datetime.datetime.combine(self._clock(), facts.now.time())) \
            if facts else None
        folder = self.kind_folder(kind, options)
        if facts is None:
            folder = folder / self._clock().isoformat()
        elif options.save_to_dirs:
            folder = folder.joinpath(*folder_parts(options.directories_filename_pattern or "[prompt_words]", facts,
                                                   options.directories_max_prompt_words))
        stem = file_stem(options.samples_filename_pattern or ("[seed]" if options.save_to_dirs else
                                                              "[seed]-[prompt_spaces]"),
                         facts, options.directories_max_prompt_words) if facts else ""
        extension = "jpg" if options.samples_format == "jpeg" else options.samples_format
        data = encode_image(image, extension, infotext if options.enable_pnginfo else None, options.jpeg_quality,
                            options.webp_lossless, extra_text if options.enable_pnginfo else None)
        sidecar = (infotext + "\n").encode() if options.save_txt and infotext else None
        if options.save_images_add_number or not stem:
            return self._saved(lambda: self._write_numbered(data, folder, f"-{stem}" if stem else "",
                                                            f".{extension}", sidecar), folder)
        return self._saved(lambda: self._write_named(data, folder / f"{stem}.{extension}", sidecar), folder)

    def _saved(self, write: Callable[[], Path], folder: Path) -> Path:
        try:
            path = write()
        except OSError as error:
            if error.errno in DISK_FULL_ERRNOS:
                raise DiskFullError(folder, error) from error
            raise
        for collector in self._collectors():
            collector.append(path)
        return path

    def grid_folder(self, kind: str, options: Options | None = None) -> Path:
        """Where a kind's grids go: outdir_grids, else outdir_<kind>_grids, else <root>/<kind>-grids; a dated
        sub-folder when grid_save_to_dirs is on (A1111's default directory pattern is the date)."""
        options = options or self._options()
        chosen = options.outdir_grids or getattr(options, f"outdir_{kind}_grids", "")
        folder = self.resolve_folder(chosen, f"outdir_{kind}_grids") if chosen else self.root / f"{kind}-grids"
        return folder / self._clock().isoformat() if options.grid_save_to_dirs else folder

    def save_grid(self, image: Image.Image, kind: str, infotext: str | None, basename: str = "grid",
                  options: Options | None = None) -> Path:
        """A grid (a batch's, the Script menu's prompt matrix, loopback...): <grid folder>/<basename>-NNNNN.<ext>
        in grid_format, with the infotext as images get it, named as A1111 names them (it numbers per
        basename)."""
        options = options or self._options()
        extension = "jpg" if options.grid_format == "jpeg" else options.grid_format
        data = encode_image(image, extension, infotext if options.enable_pnginfo else None, options.jpeg_quality,
                            options.webp_lossless)
        folder = self.grid_folder(kind, options)
        return self._saved(lambda: self._write_numbered(data, folder, "", f".{extension}", prefix=f"{basename}-"),
                           folder)

    def write_png_to(self, png: bytes, path: Path) -> Path:
        """`png` written atomically to exactly `path` (a folder the user chose, e.g. img2img Batch's output
        folder), replacing a file of that name; the folder is created when missing."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with self._lock:
                write_atomically(png, path)
        except OSError as error:
            if error.errno in DISK_FULL_ERRNOS:
                raise DiskFullError(path.parent, error) from error
            raise
        for collector in self._collectors():
            collector.append(path)
        return path

    def write_numbered(self, data: bytes, folder: Path, suffix: str, extension: str = ".png",
                       sidecar: bytes | None = None, prefix: str = "") -> Path:
        """Bytes already encoded, as the next number in `folder` (names decided elsewhere: a pool worker)."""
        return self._saved(lambda: self._write_numbered(data, folder, suffix, extension, sidecar, prefix), folder)

    def write_named(self, data: bytes, path: Path, sidecar: bytes | None = None) -> Path:
        """Bytes already encoded, under exactly `path` (names decided elsewhere: a pool worker)."""
        return self._saved(lambda: self._write_named(data, path, sidecar), path.parent)

    def _write_numbered(self, data: bytes, folder: Path, suffix: str, extension: str = ".png",
                        sidecar: bytes | None = None, prefix: str = "") -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            return self._write_named(
                data, folder / f"{prefix}{self._next_number(folder, prefix):05d}{suffix}{extension}", sidecar)

    def _write_named(self, data: bytes, path: Path, sidecar: bytes | None = None) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        if sidecar is not None:  # first: an image never lacks the sidecar it should have
            write_atomically(sidecar, path.with_suffix(".txt"))
        write_atomically(data, path)
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


def write_atomically(data: bytes, path: Path):
    """`data` under `path`, or nothing there: written to a temporary file in the same folder, flushed to disk, then
    renamed into place."""
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


def encode_image(image: Image.Image, extension: str, infotext: str | None, quality: int = 80,
                 lossless: bool = False, extra_text: dict[str, str] | None = None) -> bytes:
    """`image` as png, jpg or webp bytes; the infotext as A1111 writes it: a PNG `parameters` chunk, or for JPEG
    and WEBP the EXIF UserComment (UNICODE, UTF-16 big-endian)."""
    if extension == "png":
        return encode_png(image, infotext, extra_text)
    options: dict = {"quality": quality}
    if extension == "webp":
        options["lossless"] = lossless
        if image.mode not in ("RGB", "RGBA"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    elif image.mode != "RGB":
        image = image.convert("RGB")  # JPEG has no alpha
    if infotext:
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + infotext.encode("utf-16-be")  # Exif IFD -> UserComment
        options["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG" if extension == "jpg" else "WEBP", **options)
    return buffer.getvalue()


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


