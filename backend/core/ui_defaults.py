"""A1111's `ui-config.json`: the values the txt2img and img2img forms open with, one flat JSON object keyed
"<tab>/<label>/value" (A1111's keys), saved atomically. Only plain JSON values are kept; the UI checks each one
against its control (range, choices) before using it."""
from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
MAX_FILE_BYTES = 2**20
MAX_KEYS = 2000
MAX_TEXT = 20_000  # a prompt is the longest value a form holds


def _plain(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= MAX_TEXT
    return value is None or isinstance(value, (bool, int, float))


class UiDefaults:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def load(self) -> dict[str, Any]:
        """The saved defaults ({} when there are none or the file cannot be used: the forms' own defaults)."""
        if not self.path.is_file():
            return {}
        try:
            if self.path.stat().st_size > MAX_FILE_BYTES:
                raise ValueError("too large")
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as error:
            log.warning("%s cannot be used (%s); the forms open with their own defaults", self.path, error)
            return {}
        return {key: value for key, value in list(data.items())[:MAX_KEYS] if _plain(value)}

    def save(self, values: dict[str, Any]):
        """Replace the saved defaults with `values` (plain JSON values only)."""
        data = {key: value for key, value in values.items() if isinstance(key, str) and _plain(value)}
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".ui-config-", suffix=".json")
            try:
                with os.fdopen(handle, "w", encoding="utf-8") as file:
                    json.dump(data, file, indent=4, ensure_ascii=False)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temp, self.path)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise

    def clear(self):
        """Back to the forms' own defaults."""
        with self._lock:
            self.path.unlink(missing_ok=True)
