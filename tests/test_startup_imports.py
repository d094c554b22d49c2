"""The page must not wait for the diffusion stack: building the services and the UI imports neither diffusers nor
peft nor scipy (they take seconds; the first model load imports them once the page answers), and the default
single-process mode never imports Ray (only --workers / --ray-address do). bench/startup.py measures the time; this
keeps the property from quietly coming back."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

from backend.core.samplers import SAMPLERS, accepted_schedules
from tests.server_process import ROOT

PAGE_ONLY = """
import sys, tempfile
from pathlib import Path
from backend.services import build_services
from backend.core.settings import Settings
from ui.layout import build_ui
root = Path(tempfile.mkdtemp())
services = build_services(Settings(models_dir=root / "models", outputs_dir=root / "outputs",
                                   cache_dir=root / "cache", device="cpu"))
build_ui(services)
heavy = sorted(name for name in ("diffusers", "peft", "scipy", "accelerate", "spandrel", "ray") if name in sys.modules)
services.close()
print("HEAVY", heavy)
"""


def test_building_the_page_imports_no_diffusion_stack():
    result = subprocess.run([sys.executable, "-c", PAGE_ONLY], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert "HEAVY []" in result.stdout, result.stdout[-2000:] + result.stderr[-3000:]


def test_written_out_schedule_support_matches_diffusers():
    for name, spec in SAMPLERS.items():
        assert accepted_schedules(dataclasses.replace(spec, schedules=None)) == spec.schedules, name
