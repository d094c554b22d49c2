"""The upload folder kept within bounds: Gradio keeps every upload (and every image it shows) as a file, so a
client that uploads in a loop would otherwise fill the disk. Oldest files go first."""
from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def prune_folder(folder: Path, max_bytes: int, max_files: int) -> int:
    """Delete the oldest files under `folder` until at most `max_files` files of `max_bytes` bytes in all are
    left; empty sub-folders go too. Returns how many files were deleted."""
    files = []
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            try:
                facts = os.lstat(path)
            except OSError:
                continue  # deleted meanwhile
            files.append((facts.st_mtime, facts.st_size, path))
    total = sum(size for _, size, _ in files)
    files.sort()
    removed = 0
    for _, size, path in files:
        if total <= max_bytes and len(files) - removed <= max_files:
            break
        try:
            os.unlink(path)
        except OSError as error:
            log.warning("could not remove old upload %s: %s", path, error)
            continue
        total -= size
        removed += 1
        _remove_empty_parents(Path(path).parent, Path(folder))
    if removed:
        log.info("removed %d old file(s) from the upload folder %s", removed, folder)
    return removed


def _remove_empty_parents(folder: Path, root: Path):
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return  # not empty
        folder = folder.parent
