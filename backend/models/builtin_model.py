"""The model a new user gets when the models folder holds no checkpoint: the shapes demo model shipped in
backend/models/builtin/ (trained by tools/train_demo_model.py; see its evaluation report there).

It is an ordinary single-file SD1.x-format checkpoint and is loaded through the same code path as any
user's checkpoint. To ship a different built-in model, replace the file and BUILTIN_FILE below.
"""
from __future__ import annotations

from pathlib import Path

BUILTIN_FILE = Path(__file__).parent / "builtin" / "shapes-demo.safetensors"
BUILTIN_LABEL = "built-in demo model: a tiny world of coloured shapes, 64x64"


def builtin_checkpoint() -> Path:
    if not BUILTIN_FILE.is_file():
        raise FileNotFoundError(f"the built-in demo model {BUILTIN_FILE} is missing from this checkout; "
                                "restore it with git, or put a checkpoint in the models folder")
    return BUILTIN_FILE
