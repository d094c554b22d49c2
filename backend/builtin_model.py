"""The model a new user gets when the models folder holds no checkpoint.

It is created on first start in the app's cache folder and loaded through the same code path as any
user's checkpoint. To ship a different built-in model, change BUILTIN_CHECKPOINT's source below.
"""
from __future__ import annotations

import os
from pathlib import Path

from backend.tiny_models import write_tiny_checkpoint

BUILTIN_FILE_NAME = "builtin-demo-tiny.safetensors"
BUILTIN_LABEL = "built-in demo model: tiny, untrained, draws noise-like patterns"
BUILTIN_SEED = 1234


def ensure_builtin_checkpoint(cache_dir: Path) -> Path:
    path = Path(cache_dir) / "builtin" / BUILTIN_FILE_NAME
    if not path.exists():
        partial = path.with_name(".partial-" + path.name)
        write_tiny_checkpoint(partial, "sd1", seed=BUILTIN_SEED, metadata={"description": BUILTIN_LABEL})
        os.replace(partial, path)
    return path
