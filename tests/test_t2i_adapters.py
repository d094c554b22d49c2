"""T2I-Adapters through the ControlNet units, with tiny adapters in the layouts users download: TencentARC's v2
single files and diffusers' T2IAdapter (file or folder): listed, read into diffusers' model, run with weight and
start/end, and refused with a clear message when they do not fit."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from backend.core.infotext import parse_infotext
from backend.core.requests import Txt2ImgRequest
from tests.conftest import FAST
from tests.tiny_t2i_adapters import tiny_adapter, to_original, write_tiny_adapter


@pytest.fixture
def services(make_services, models_dir):
    folder = models_dir / "ControlNet"
    write_tiny_adapter(folder / "t2iadapter_canny_sd15v2.pth", "sd1", seed=1)
    write_tiny_adapter(folder / "t2i-adapter-canny-diffusers", "sd1", seed=1, layout="folder")
    write_tiny_adapter(folder / "t2i-adapter-sketch-sdxl.safetensors", "sdxl", seed=1, layout="diffusers")
    return make_services()


def square_png() -> bytes:
    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).rectangle((16, 16, 48, 48), fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def unit(**fields) -> dict:
    return {"module": "canny", "model": "t2iadapter_canny_sd15v2", "image": square_png(), "processor_res": 64,
            **fields}


def run(services, **fields):
    request = services.build_request(Txt2ImgRequest, {**FAST, "prompt": "a cat", "seed": 3, "save_images": False,
                                                      **fields})
    return services.jobs.run_and_wait(request, timeout=300)


def pixels(job) -> np.ndarray:
    assert job.status == "done", job.error
    return np.asarray(Image.open(io.BytesIO(job.result.images[0].png)).convert("RGB"), dtype=np.int16)


def test_tencentarc_and_diffusers_adapters_are_listed_and_read_exactly(services):
    names = [title.split(" [")[0] for title in services.controlnets.model_titles()]
    assert {"t2iadapter_canny_sd15v2", "t2i-adapter-canny-diffusers", "t2i-adapter-sketch-sdxl"} <= set(names)
    expected = tiny_adapter("sd1", seed=1).state_dict()
    with services.models.lease(None) as (entry, model):
        for name in ("t2iadapter_canny_sd15v2", "t2i-adapter-canny-diffusers"):
            with services.controlnets.cache.lease(name, dict(model.pipeline.unet.config), model.family, entry.title,
                                                  torch.float32) as (_, adapter):
                assert type(adapter).__name__ == "T2IAdapter" and adapter.config.in_channels == 1
                state = adapter.state_dict()
                assert state.keys() == expected.keys()
                assert all(torch.equal(state[key], expected[key]) for key in expected), name


def test_an_adapter_unit_steers_with_weight_and_start_end(services):
    plain = pixels(run(services))
    steered_job = run(services, controlnet_units=[unit()])
    steered = pixels(steered_job)
    assert np.abs(steered - plain).mean() > 1
    text = parse_infotext(steered_job.result.images[0].infotext)["ControlNet 0"]
    assert text.startswith("Module: canny, Model: t2iadapter_canny_sd15v2 [")
    assert np.array_equal(pixels(run(services, controlnet_units=[unit(weight=0)])), plain)
    early = pixels(run(services, controlnet_units=[unit(guidance_end=0.5)]))  # the first of 3 steps only
    late = pixels(run(services, controlnet_units=[unit(guidance_start=0.5)]))  # the last of 3 steps only
    assert (early != steered).any() and np.abs(early - plain).mean() > 0.5
    assert (late != plain).any() and np.abs(late - steered).mean() > 0.5
    folder_model = pixels(run(services, controlnet_units=[unit(model="t2i-adapter-canny-diffusers")]))
    assert np.array_equal(folder_model, steered)  # the same weights in diffusers' folder layout


def test_adapters_that_do_not_fit_are_refused_naming_the_field(services, models_dir):
    job = run(services, controlnet_units=[unit(model="t2i-adapter-sketch-sdxl")])
    assert job.status == "failed" and "controlnet_units.0.model" in job.error and "SDXL adapter" in job.error
    job = run(services, controlnet_units=[unit(control_mode=1)])
    assert job.status == "failed" and "controlnet_units.0.control_mode" in job.error
    old = to_original(tiny_adapter("sd1", seed=1))
    old["body.0.skep.weight"] = old["body.0.block2.weight"]
    torch.save(old, models_dir / "ControlNet" / "t2iadapter_canny_sd14v1.pth")
    services.controlnets.folder.refresh()
    job = run(services, controlnet_units=[unit(model="t2iadapter_canny_sd14v1")])
    assert job.status == "failed" and "v1 T2I-Adapter" in job.error
    assert os.path.exists(models_dir / "ControlNet" / "t2iadapter_canny_sd14v1.pth")
