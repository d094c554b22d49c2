"""The import rules of docs/architecture.md: backend/ never imports gradio or ui; ui/ never imports torch or
diffusers; backend's packages import only the layers below them; bundled extensions import only the plugin
facade (or nothing of ours)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Each backend package may import itself and the packages listed before it (lower layers), never one after it.
LAYERS = ["core", "jobs", "models", ("prompts", "upscale", "plugins", "controlnet"), "generation", "services",
          "cluster", "http"]


def layer_of(package: str) -> int:
    for index, layer in enumerate(LAYERS):
        if package == layer or (isinstance(layer, tuple) and package in layer):
            return index
    raise AssertionError(f"backend.{package} is in no layer of LAYERS: place it there")


def full_imports(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in it (function-level imports included), fully dotted."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module in ("backend", "ui"):  # `from backend import services` names a module
                names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def imported_modules(folder: str) -> dict[str, set[str]]:
    return {str(path.relative_to(ROOT)): {name.split(".")[0] for name in full_imports(path)}
            for path in (ROOT / folder).rglob("*.py")}


def backend_package(path: Path) -> str:
    parts = path.relative_to(ROOT / "backend").with_suffix("").parts
    return parts[0]


def upward_imports(root: Path) -> list[str]:
    """'file -> module' for each import of a backend package from a lower layer (or of ui/gradio from backend)."""
    found = []
    for path in sorted((root / "backend").rglob("*.py")):
        if path.name == "__init__.py" and path.parent == root / "backend":
            continue
        own = layer_of(path.relative_to(root / "backend").with_suffix("").parts[0])
        for name in sorted(full_imports(path)):
            parts = name.split(".")
            if parts[0] in ("ui", "gradio") or parts[0] == "backend" and len(parts) > 1 and layer_of(parts[1]) > own:
                found.append(f"{path.relative_to(root)} -> {name}")
    return found


def test_backend_never_imports_gradio():
    offenders = [path for path, names in imported_modules("backend").items() if "gradio" in names]
    assert offenders == []


def test_ui_never_touches_torch_or_diffusers():
    offenders = [path for path, names in imported_modules("ui").items() if names & {"torch", "diffusers"}]
    assert offenders == []


def test_backend_packages_import_only_lower_layers():
    assert upward_imports(ROOT) == []


def test_backend_root_holds_only_services_and_packages():
    loose = sorted(p.name for p in (ROOT / "backend").glob("*.py") if p.name not in ("__init__.py", "services.py"))
    assert loose == []
    for package in (p for p in (ROOT / "backend").iterdir() if p.is_dir() and p.name != "__pycache__"):
        assert (package / "__init__.py").is_file(), package
        layer_of(package.name)  # every package has its place in LAYERS


def test_package_inits_are_free_of_side_effects():
    """Importing a package costs nothing: its __init__ holds a docstring at most."""
    for init in (ROOT / "backend").rglob("__init__.py"):
        body = ast.parse(init.read_text()).body
        assert all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body), init


def test_nothing_in_backend_imports_the_http_layer_or_services_except_http():
    """(The cluster's workers build their generation services with services.py, as the server does.)"""
    offenders = [f"{path} -> {name}" for path in (ROOT / "backend").rglob("*.py")
                 if backend_package(path) not in ("http", "services", "cluster")
                 for name in full_imports(path) if name.startswith(("backend.http", "backend.services"))]
    assert offenders == []


def test_bundled_extensions_import_only_the_plugin_facade():
    offenders = [f"{path.relative_to(ROOT)} -> {name}" for path in (ROOT / "extensions").rglob("*.py")
                 for name in full_imports(path)
                 if name.split(".")[0] in ("backend", "ui") and not name.startswith("backend.plugins.api")]
    assert offenders == []


@pytest.mark.parametrize("upward", ["from backend.generation.generator import Generator",
                                    "import backend.http.routes", "from backend import services"])
def test_an_upward_import_is_caught(tmp_path, upward):
    """The check itself: a models module that reaches up is reported."""
    scratch = tmp_path / "backend" / "models"
    scratch.mkdir(parents=True)
    (scratch / "scratch.py").write_text(f"def later():\n    {upward}\n")
    found = upward_imports(tmp_path)
    assert len(found) == 1 and found[0].startswith("backend/models/scratch.py -> backend.")
