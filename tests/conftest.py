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


def pytest_configure(config):
    """Under pytest-xdist each worker gets its share of the cores, and so do the server processes it starts
    (they inherit OMP_NUM_THREADS): more threads than cores would only make the workers wait for each other."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)


# The slowest test files (pytest --durations, 2-core machine), started first so that under pytest-xdist (one file
# per worker, pytest.ini) the run does not end with one worker alone on a long file. Run with
# --no-loadscope-reorder, which keeps this order instead of xdist's ordering by test count.
SLOW_FILES_FIRST = (
    "test_ui_browser.py", "test_worker_pool.py", "test_speed_options.py", "test_security_server.py",
    "test_demo_model.py",
    "test_ui_seed_extras_browser.py", "test_ui_day_to_day.py", "test_api_fuzz.py", "test_ui_img2img_batch_browser.py",
    "test_face_restoration.py", "test_mcp.py", "test_restart_and_auth.py", "test_startup_messages.py",
    "test_controlnet_generation.py", "test_shutdown.py", "test_options_api.py", "test_flow_generation.py",
    "test_webuiapi_client.py", "test_extension_index.py", "test_broken_checkpoints.py", "test_settings_browser.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: place for place, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


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


@pytest.fixture(scope="session")
def flow_files(tmp_path_factory) -> dict[str, Path]:
    """Tiny Flux dev (seed 1) in BFL, ComfyUI and diffusers layouts, and SD3.5 (seed 2) as Stability's single file
    and a diffusers folder; `text_encoder` and `VAE` hold the separate parts BFL's file needs (Forge's folders)."""
    from tools.tiny_flow_models import (
        tiny_t5_tokenizer,
        write_flux_bfl,
        write_flux_comfy,
        write_sd3_single_file,
        write_tiny_flow_folder,
    )

    root = tmp_path_factory.mktemp("flow")
    parts = write_flux_bfl(root / "bfl", seed=1)
    text_encoders, vaes = root / "text_encoder", root / "VAE"
    tiny_t5_tokenizer().save_pretrained(text_encoders / "t5_tokenizer")
    vaes.mkdir()
    os.link(parts["vae"], vaes / "ae.safetensors")
    os.link(parts["clip_l"], text_encoders / "clip_l.safetensors")
    os.link(parts["t5xxl"], text_encoders / "t5xxl_fp16.safetensors")
    return {
        "flux_bfl": parts["transformer"], "flux_comfy": write_flux_comfy(root / "flux-comfy.safetensors", seed=1),
        "flux_folder": write_tiny_flow_folder(root / "flux-diffusers", "flux", seed=1),
        "sd3": write_sd3_single_file(root / "sd3.5-tiny.safetensors", seed=2),
        "sd3_folder": write_tiny_flow_folder(root / "sd3-diffusers", "sd3", seed=2),
        "text_encoder": text_encoders, "VAE": vaes,
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


@pytest.fixture
def client(services):
    """The REST API over `services`, in-process (no server)."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from backend.http.routes import build_api_router

    app = FastAPI()
    app.include_router(build_api_router(services))
    with TestClient(app) as http:
        yield http


def run_txt2img(services, **fields):
    job = services.jobs.run_and_wait(Txt2ImgRequest(**{**FAST, **fields}), timeout=300)
    assert job.done, "job did not finish"
    return job


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="session")
def gfpgan_file(tmp_path_factory) -> Path:
    """GFPGANv1.4.pth as published ({"params_ema": state dict}), the network built by spandrel, random weights."""
    import torch
    from spandrel.architectures.GFPGAN import GFPGAN

    torch.manual_seed(0)
    network = GFPGAN(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None,
                     fix_decoder=False, num_mlp=8, input_is_latent=True, different_w=True, narrow=1, sft_half=True)
    path = tmp_path_factory.mktemp("gfpgan") / "GFPGANv1.4.pth"
    torch.save({"params_ema": network.state_dict()}, path)
    return path


@pytest.fixture
def with_gfpgan(models_dir, gfpgan_file) -> Path:
    folder = models_dir / "GFPGAN"
    folder.mkdir(exist_ok=True)
    os.link(gfpgan_file, folder / gfpgan_file.name)
    return folder / gfpgan_file.name
