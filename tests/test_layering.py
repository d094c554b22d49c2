"""backend/ never imports gradio; ui/ never imports torch or diffusers."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(folder: str) -> dict[str, set[str]]:
    found = {}
    for path in (ROOT / folder).rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_backend_never_imports_gradio():
    offenders = [path for path, names in imported_modules("backend").items() if "gradio" in names]
    assert offenders == []


def test_ui_never_touches_torch_or_diffusers():
    offenders = [path for path, names in imported_modules("ui").items() if names & {"torch", "diffusers"}]
    assert offenders == []
