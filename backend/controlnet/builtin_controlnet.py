"""The ControlNet shipped beside the built-in demo model (backend/models/builtin/shapes-demo-controlnet.safetensors,
trained by tools/train_demo_controlnet.py; see its report there): listed with the user's models/ControlNet files
whenever the built-in demo model is among the checkpoints, since it only fits that model."""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from backend.controlnet.model_files import ControlNetEntry, legacy_model_hash
from backend.models.builtin_model import BUILTIN_FILE

BUILTIN_CONTROLNET_FILE = BUILTIN_FILE.with_name("shapes-demo-controlnet.safetensors")
# the Control Types it was trained for (canny edges, scribble_xdog and invert outlines), which its name does not say
BUILTIN_CONTROL_TYPES = ("Canny", "Scribble")

log = logging.getLogger(__name__)


def builtin_controlnet_entry(path: Path = BUILTIN_CONTROLNET_FILE) -> ControlNetEntry | None:
    """The listing entry of the shipped file, or None (logged) when the checkout lacks it or it cannot be read: a
    missing demo ControlNet must not stop the server."""
    try:
        if not path.is_file():
            log.warning("the built-in demo ControlNet %s is missing; restore it with git", path)
            return None
        return ControlNetEntry(path.stem, path, legacy_model_hash(path))
    except OSError as error:
        log.warning("the built-in demo ControlNet %s cannot be read: %s", path, error)
        return None


def builtin_when(demo_checkpoint_listed: Callable[[], bool], path: Path = BUILTIN_CONTROLNET_FILE
                 ) -> Callable[[], ControlNetEntry | None]:
    """What ControlNetFolder asks on each scan: the built-in entry while the demo checkpoint is listed, else None."""
    def entry() -> ControlNetEntry | None:
        return builtin_controlnet_entry(path) if demo_checkpoint_listed() else None
    return entry
