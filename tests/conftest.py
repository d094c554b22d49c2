"""Shared fixtures: tiny checkpoints in real on-disk formats, and services built on temp folders."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download during tests

from backend.core.requests import Txt2ImgRequest  # noqa: E402
from backend.core.settings import Settings  # noqa: E402
from backend.services import build_services  # noqa: E402
from tools.tiny_models import write_tiny_checkpoint  # noqa: E402

FAST = dict(steps=3, width=64, height=64, cfg_scale=5.0)


@pytest.fixture(scope="session")
def checkpoint_files(tmp_path_factory) -> dict[str, Path]:
    """Tiny SD1 (two seeds), SD2 and SDXL single-file checkpoints in the original key layout."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "sd1": write_tiny_checkpoint(root / "tiny-sd1.safetensors", "sd1", seed=1),
        "sd1_other": write_tiny_checkpoint(root / "tiny-sd1-other.safetensors", "sd1", seed=2),
        "sd2": write_tiny_checkpoint(root / "tiny-sd2.safetensors", "sd2", seed=3),
        "sdxl": write_tiny_checkpoint(root / "tiny-sdxl.safetensors", "sdxl", seed=4),
    }


@pytest.fixture
def models_dir(tmp_path, checkpoint_files) -> Path:
    """An A1111-style models folder holding two SD1 checkpoints (hard links: no copying)."""
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    for key in ("sd1", "sd1_other"):
        os.link(checkpoint_files[key], folder / checkpoint_files[key].name)
    return tmp_path / "models"


@pytest.fixture
def make_services(tmp_path, models_dir):
    """Build services over the temp models folder; keyword arguments override Settings fields."""
    built = []

    def make(**overrides):
        settings = Settings(**{"models_dir": models_dir, "outputs_dir": tmp_path / "outputs",
                               "cache_dir": tmp_path / "cache", "device": "cpu", "max_models_in_memory": 2,
                               **overrides})
        built.append(build_services(settings))
        return built[-1]

    yield make
    for services in built:
        services.close()


@pytest.fixture
def services(make_services):
    return make_services()


def run_txt2img(services, **fields):
    job = services.jobs.run_and_wait(Txt2ImgRequest(**{**FAST, **fields}), timeout=300)
    assert job.done, "job did not finish"
    return job


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
