"""The user options, kept in A1111's `config.json` (one flat JSON object) in the data folder: loaded at start,
written atomically on every change. Command-line flags that set the same thing win: their values are reported
and used, while the file keeps what the user chose (it applies again once the flag is gone).

Keys in the file that this server does not know (an A1111 extension's, say) are kept in the file untouched.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backend.core.options import OPTION_NAMES, OptionError, Options, validate_options

log = logging.getLogger(__name__)
MAX_CONFIG_BYTES = 4 * 2**20  # a config.json is a few KB; a larger file is not one


class OptionsStore:
    def __init__(self, path: Path, overrides: dict[str, Any] | None = None):
        """`overrides`: option -> value set by a command-line flag (validated like any value)."""
        self.path = Path(path)
        self.overrides = dict(validate_options(overrides or {}).model_dump(include=set(overrides or {})))
        self._lock = threading.Lock()
        self._listeners: list[Callable[[Options, set[str]], None]] = []
        self._checks: list[Callable[[Options], None]] = []
        self._stored, self._foreign = self._load()
        self._current = self._stored.model_copy(update=self.overrides)

    @property
    def current(self) -> Options:
        """The options in effect now (flags applied): an immutable snapshot, safe to keep for a whole job."""
        return self._current

    def as_dict(self) -> dict[str, Any]:
        return self._current.model_dump()

    def stored(self) -> dict[str, Any]:
        """What the user chose (config.json), before flags."""
        return self._stored.model_dump()

    def on_change(self, listener: Callable[[Options, set[str]], None]):
        """`listener(options, changed_keys)` after each change that was saved."""
        self._listeners.append(listener)

    def add_check(self, check: Callable[[Options], None]):
        """`check(options)` raises a UserError naming the option when a set of values may not be used here
        (beyond type and range: a folder outside the outputs root, say); run before anything is saved."""
        self._checks.append(check)

    def validate(self, changes: dict[str, Any]) -> Options:
        """The stored options with `changes` applied, checked; raises OptionError (or a check's UserError)."""
        options = validate_options({**self._stored.model_dump(), **changes})
        for check in self._checks:
            check(options)
        return options

    def update(self, changes: dict[str, Any]) -> list[str]:
        """Validate and save `changes`; returns the keys whose stored value changed. Raises OptionError naming the
        first bad key (then nothing is changed)."""
        with self._lock:
            stored = self.validate(changes)
            changed = sorted(key for key in changes if getattr(stored, key) != getattr(self._stored, key))
            if not changed:
                return []
            self._write(stored)
            self._stored = stored
            self._current = stored.model_copy(update=self.overrides)
            current = self._current
        for listener in self._listeners:
            listener(current, set(changed))
        return changed

    def _load(self) -> tuple[Options, dict[str, Any]]:
        if not self.path.is_file():
            return Options(), {}
        try:
            if self.path.stat().st_size > MAX_CONFIG_BYTES:
                raise ValueError(f"larger than {MAX_CONFIG_BYTES // 2**20} MB")
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as error:
            log.error("%s cannot be read (%s); using the default options (the file is left as it is until an "
                      "option is changed)", self.path, error)
            return Options(), {}
        known = {key: value for key, value in data.items() if key in OPTION_NAMES}
        foreign = {key: value for key, value in data.items() if key not in OPTION_NAMES}
        for key in list(known):  # a bad value falls back to its default; the others still load
            try:
                validate_options({key: known[key]})
            except OptionError as error:
                log.warning("%s: %s; using the default", self.path, error)
                foreign[key] = known.pop(key)  # kept in the file as the user wrote it, until they set it here
        return Options(**known), foreign

    def _write(self, options: Options):
        self._foreign = {key: value for key, value in self._foreign.items() if key not in OPTION_NAMES}
        data = {**self._foreign, **options.model_dump()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".config-", suffix=".json")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                json.dump(data, file, indent=4, ensure_ascii=False)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, self.path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
