"""Which separate VAE / text encoder files each checkpoint loads with (Forge's "VAE / Text Encoder" choice),
remembered per checkpoint across restarts in one small JSON file, written atomically."""
from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path

from backend.models.flow_loader import TEXT_ENCODER_EXTENSIONS, ComponentFolders
from backend.models.weight_files import CheckpointError

VAE_EXTENSIONS = (".safetensors", ".sft")
TEXT_ENCODER_KINDS = ("clip_l", "clip_g", "t5xxl")


class ComponentChoices:
    def __init__(self, state_file: Path, folders: ComponentFolders):
        self.state_file = Path(state_file)
        self.folders = folders
        self._lock = threading.Lock()

    def available(self) -> list[str]:
        """The files one can choose: text encoders, then VAEs, by file name."""
        names: list[str] = []
        for folder, extensions in ((self.folders.text_encoder_dir, TEXT_ENCODER_EXTENSIONS),
                                   (self.folders.vae_dir, VAE_EXTENSIONS)):
            if folder is not None and folder.is_dir():
                names += sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix in extensions)
        return names

    def chosen(self, title: str) -> list[str]:
        return list(self._read().get(title, []))

    def choose(self, title: str, names: list[str]) -> dict[str, Path]:
        """Remember `names` for the checkpoint `title`; returns what they resolve to. An unknown file, two files
        for one part or a file whose part cannot be told is the user's error naming it."""
        resolved = self.resolve(names)
        with self._lock:
            state = self._read()
            if names:
                state[title] = list(names)
            else:
                state.pop(title, None)
            self._write(state)
        return resolved

    def resolve(self, names: list[str]) -> dict[str, Path]:
        """Chosen file names -> {"vae" | "clip_l" | "clip_g" | "t5xxl": path}."""
        parts: dict[str, Path] = {}
        for name in names:
            kind, path = self._identify(name)
            if kind in parts:
                raise CheckpointError(f"both {parts[kind].name} and {name} are a {kind}; choose one",
                                      field="text_encoders")
            parts[kind] = path
        return parts

    def _identify(self, name: str) -> tuple[str, Path]:
        text_encoders, vaes = self.folders.text_encoder_dir, self.folders.vae_dir
        if Path(name).name != name:
            raise CheckpointError(f"{name!r} is not a file name", field="text_encoders")
        if vaes is not None and (vaes / name).is_file():
            return "vae", vaes / name
        if text_encoders is not None and (text_encoders / name).is_file():
            lowered = name.lower()
            kind = next((k for k in TEXT_ENCODER_KINDS if k in lowered), "t5xxl" if "t5" in lowered else None)
            if kind is None:
                raise CheckpointError(f"cannot tell which text encoder {name} is: name it with clip_l, clip_g or "
                                      "t5xxl in it, as Forge and ComfyUI do", field="text_encoders")
            return kind, text_encoders / name
        raise CheckpointError(f"no VAE or text encoder named {name}; available: {', '.join(self.available())}",
                              field="text_encoders")

    def _read(self) -> dict[str, list[str]]:
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): [str(n) for n in v] for k, v in data.items() if isinstance(v, list)} \
            if isinstance(data, dict) else {}

    def _write(self, state: dict):
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.state_file.parent, prefix=".components-")
        try:
            with os.fdopen(handle, "w") as file:
                json.dump(state, file, indent=1)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.state_file)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
