"""Image files are written atomically: a failing write leaves nothing under a real name."""
from __future__ import annotations

import datetime

import pytest
from PIL import Image

from backend.core.image_metadata import read_infotext
from backend.jobs.outputs import OutputStore


def test_failed_write_leaves_no_file_and_numbering_continues(tmp_path, monkeypatch):
    store = OutputStore(tmp_path, clock=lambda: datetime.date(2026, 1, 2))
    image = Image.new("RGB", (8, 8), "red")
    first = store.save(image, "txt2img", 11, "params one")
    assert first.name == "00000-11.png" and first.parent.name == "2026-01-02"

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("backend.jobs.outputs.os.fsync", disk_full)  # the bytes were written, then the disk filled
    with pytest.raises(OSError):
        store.save(image, "txt2img", 12, "params two")
    monkeypatch.undo()
    assert sorted(p.name for p in first.parent.iterdir()) == ["00000-11.png"]
    second = store.save(image, "txt2img", 13, "params three")
    assert second.name == "00001-13.png"
    assert read_infotext(second) == "params three"
    assert Image.open(second).getpixel((0, 0)) == (255, 0, 0)
