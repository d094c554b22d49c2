"""Find, import and register the extensions in `extensions/`, one Python package per folder.

A folder whose name ends in `.disabled`, or that the user disabled (remembered in a small JSON file), is
listed but not imported. An extension that fails to import or whose `register(api)` raises is listed with
its error, everything it registered is taken back, and the others load as usual.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from backend.models.construction import ModelConstruction
from backend.plugins.api import API_VERSION, ExtensionAPI, ExtensionHooks

log = logging.getLogger(__name__)
DISABLED_SUFFIX = ".disabled"
MODULE_PREFIX = "webui_extensions"  # imported as webui_extensions.<name>, so their relative imports work


@dataclass
class ExtensionRecord:
    name: str
    path: Path
    enabled: bool
    loaded: bool = False
    version: str = ""  # the package's __version__, else its git commit
    load_seconds: float | None = None
    error: str | None = None
    javascript: list[Path] = field(default_factory=list)
    stylesheet: Path | None = None


def module_name(folder_name: str) -> str:
    return f"{MODULE_PREFIX}.{re.sub(r'[^0-9a-zA-Z_]', '_', folder_name)}"


def git_commit(folder: Path) -> str:
    if not (folder / ".git").exists():
        return ""
    try:
        return subprocess.run(["git", "-C", str(folder), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


class ExtensionState:
    """Which extensions the user switched off, kept across restarts."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def disabled(self) -> set[str]:
        try:
            return set(json.loads(self.path.read_text()).get("disabled", []))
        except (OSError, ValueError, AttributeError):
            return set()

    def set_enabled(self, name: str, enabled: bool):
        disabled = self.disabled()
        (disabled.discard if enabled else disabled.add)(name)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_suffix(".tmp")
        temp.write_text(json.dumps({"disabled": sorted(disabled)}, indent=1))
        os.replace(temp, self.path)


class Extensions:
    def __init__(self, folder: Path | None, state_file: Path, outputs_dir: Path | None = None,
                 construction: ModelConstruction | None = None, grid_saver=None):
        self.folder = Path(folder) if folder else None
        self.construction = construction or ModelConstruction()  # passed to each extension's api
        self.state = ExtensionState(state_file)
        self.outputs_dir = outputs_dir
        self.grid_saver = grid_saver  # api.save_grid: grid(image, request, infotext) -> path | None
        self.hooks = ExtensionHooks()
        self.records: list[ExtensionRecord] = []

    def load_all(self) -> list[ExtensionRecord]:
        if self.folder is None or not self.folder.is_dir():
            return self.records
        disabled = self.state.disabled()
        for path in sorted(p for p in self.folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
            name = path.name.removesuffix(DISABLED_SUFFIX)
            enabled = not path.name.endswith(DISABLED_SUFFIX) and name not in disabled
            record = ExtensionRecord(name=name, path=path, enabled=enabled, version=git_commit(path),
                                     javascript=sorted((path / "javascript").glob("*.js")),
                                     stylesheet=path / "style.css" if (path / "style.css").is_file() else None)
            self.records.append(record)
            if enabled:
                self._load(record)
        return self.records

    def _load(self, record: ExtensionRecord):
        started = time.perf_counter()
        try:
            module = self._import(record)
            register = getattr(module, "register", None)
            if not callable(register):
                raise TypeError("the package has no register(api) function")
            record.version = str(getattr(module, "__version__", "") or record.version)
            register(ExtensionAPI(record.name, self.hooks, self.outputs_dir, self.construction, self.grid_saver))
            record.loaded = True
        except Exception as error:  # any failure of foreign code is reported, never fatal
            record.error = f"{type(error).__name__}: {error}"
            log.error("extension %s failed to load: %s\n%s", record.name, record.error, traceback.format_exc())
            self._take_back(record.name)
        record.load_seconds = time.perf_counter() - started

    @staticmethod
    def _import(record: ExtensionRecord):
        init = record.path / "__init__.py"
        if not init.is_file():
            raise FileNotFoundError(f"{record.path.name} is not a Python package (no __init__.py)")
        if MODULE_PREFIX not in sys.modules:  # a namespace for the extensions' modules
            namespace = importlib.util.module_from_spec(importlib.util.spec_from_loader(MODULE_PREFIX, loader=None))
            namespace.__path__ = []
            sys.modules[MODULE_PREFIX] = namespace
        name = module_name(record.path.name)
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(record.path)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module

    def _take_back(self, extension: str):
        """Remove whatever a failed extension registered before it failed."""
        hooks = self.hooks
        for kind in ("before_generate", "image_prompt", "on_step", "after_generate", "before_save",
                     "generation_wrappers", "sections", "tabs", "routes"):
            setattr(hooks, kind, [item for item in getattr(hooks, kind) if item.extension != extension])
        for table in (hooks.upscalers, hooks.samplers):
            for key in [key for key, item in table.items() if item.extension == extension]:
                del table[key]

    def set_enabled(self, name: str, enabled: bool):
        """Remembered for the next start (an extension's code cannot be unloaded from a running server)."""
        if not any(record.name == name for record in self.records):
            raise KeyError(f"no extension named {name!r}")
        self.state.set_enabled(name, enabled)

    def will_be_enabled(self, name: str) -> bool:
        return name not in self.state.disabled()

    def page_head(self) -> str:
        """<script>/<style> tags for the loaded extensions' javascript/*.js and style.css."""
        parts = []
        for record in self.records:
            if not record.loaded:
                continue
            for script in record.javascript:
                parts.append(f"<script>\n// extension {record.name}: {script.name}\n{script.read_text()}\n</script>")
            if record.stylesheet:
                parts.append(f"<style>\n/* extension {record.name} */\n{record.stylesheet.read_text()}\n</style>")
        return "\n".join(parts)

    @property
    def api_version(self) -> str:
        return API_VERSION
