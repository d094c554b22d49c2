"""A1111's "Tiling": seamless images from the demo model (edges measured), X-only / Y-only, the cached model
restored after the job, infotext and REST."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from backend.core.infotext import parse_infotext, request_fields
from backend.core.requests import Txt2ImgRequest
from backend.generation.seamless import seamless
from backend.http.routes import build_api_router
from tests.conftest import pixels, run_txt2img
from tests.test_demo_model import DEMO


@pytest.fixture
def demo(make_services, tmp_path):
    """The shipped demo model (the only checkpoint when the models folder is empty): it paints smooth shapes,
    so whether edges meet can be measured."""
    return make_services(models_dir=tmp_path / "no-checkpoints")


def generate(services, **fields):
    job = services.jobs.run_and_wait(Txt2ImgRequest(**{**DEMO, "prompt": "a red circle", **fields}), timeout=300)
    assert job.status == "done", job.error
    image = job.result.images[0]
    return np.asarray(Image.open(io.BytesIO(image.png)).convert("RGB"), dtype=float), image.infotext


def seam_ratios(image: np.ndarray) -> tuple[float, float]:
    """How much the wrap-around step (last column -> first, last row -> first) exceeds an ordinary step between
    neighbouring columns (rows): about 1 where the edges continue each other."""
    across = np.abs(image[:, 0] - image[:, -1]).mean() / np.abs(np.diff(image, axis=1)).mean()
    down = np.abs(image[0] - image[-1]).mean() / np.abs(np.diff(image, axis=0)).mean()
    return across, down


def test_tiling_images_continue_across_their_edges_and_the_model_is_restored(demo):
    for seed in (1, 2):
        base, _ = generate(demo, seed=seed)
        tiled, infotext = generate(demo, seed=seed, tiling=True)
        assert min(seam_ratios(base)) > 4  # an ordinary image: its opposite edges do not meet
        assert max(seam_ratios(tiled)) < 2
        assert parse_infotext(infotext)["Tiling"] == "True"
        after, after_infotext = generate(demo, seed=seed)  # the next job without tiling: the base pixels exactly
        assert np.array_equal(after, base) and "Tiling" not in after_infotext


@pytest.mark.parametrize("axes, wrapped", [("X", 0), ("Y", 1)])
def test_tiling_along_one_axis(demo, axes, wrapped):
    tiled, infotext = generate(demo, seed=2, tiling=True, tiling_axes=axes)
    ratios = seam_ratios(tiled)
    assert ratios[wrapped] < 2 and ratios[1 - wrapped] > 4
    fields = request_fields(parse_infotext(infotext))
    assert fields["tiling"] is True and fields["tiling_axes"] == axes


def test_seamless_convolution_wraps_and_is_undone():
    conv = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
    torch.nn.init.ones_(conv.weight)
    image = torch.zeros(1, 1, 4, 4)
    image[..., :, 0] = 1  # a stripe on the left edge
    with seamless([conv], "X"):
        wrapped = conv(image)
    assert wrapped[0, 0, 1, 3] == 3  # the right edge sees the left edge's stripe
    assert wrapped[0, 0, 0, 0] == 2  # no wrap from top to bottom
    assert conv(image)[0, 0, 1, 3] == 0 and "_conv_forward" not in vars(conv)


def test_tiling_with_tiny_sdxl_and_rest(make_services, checkpoint_files, tmp_path):
    folder = tmp_path / "xl" / "Stable-diffusion"
    folder.mkdir(parents=True)
    os.link(checkpoint_files["sdxl"], folder / checkpoint_files["sdxl"].name)
    services = make_services(models_dir=folder.parent)
    base = pixels(run_txt2img(services, seed=1, sampler_name="Euler").result.images[0].path)
    tiled = pixels(run_txt2img(services, seed=1, sampler_name="Euler", tiling=True).result.images[0].path)
    assert np.abs(tiled - base).mean() > 0.5
    app = FastAPI()
    app.include_router(build_api_router(services))
    with TestClient(app) as client:
        response = client.post("/sdapi/v1/txt2img", json={"prompt": "p", "steps": 3, "width": 64, "height": 64,
                                                          "seed": 1, "sampler_name": "Euler", "tiling": True})
        assert response.status_code == 200, response.text
        assert "Tiling: True" in response.json()["info"]
    again = pixels(run_txt2img(services, seed=1, sampler_name="Euler").result.images[0].path)
    assert np.array_equal(again, base)
