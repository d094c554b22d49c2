"""SD3.5 skip-layer guidance: the pixels diffusers' StableDiffusion3Pipeline gives with the same layers, scale and
window; infotext written and read back; refused by name on other families, in img2img, without CFG and for a layer
the model lacks."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from backend.core.infotext import parse_infotext, request_fields
from backend.core.requests import Img2ImgRequest, Txt2ImgRequest

SLG = dict(steps=4, width=64, height=64, seed=9, sampler_name="Euler", prompt="a red cat", negative_prompt="",
           cfg_scale=4.0)
SKIP = dict(skip_guidance_layers=[1], skip_layer_guidance_scale=8.0, skip_layer_guidance_start=0.0,
            skip_layer_guidance_stop=1.0)


@pytest.fixture
def slg_services(make_services, tmp_path, flow_files):
    models = tmp_path / "slg-models"
    (models / "Stable-diffusion").mkdir(parents=True)
    os.link(flow_files["sd3"], models / "Stable-diffusion" / "sd3-tiny.safetensors")
    os.link(flow_files["flux_comfy"], models / "Stable-diffusion" / "flux-tiny.safetensors")
    (models / "text_encoder").symlink_to(flow_files["text_encoder"])
    return make_services(models_dir=models)


def run(services, request_class=Txt2ImgRequest, **fields):
    return services.jobs.run_and_wait(request_class(**{**SLG, "checkpoint": "sd3-tiny", **fields}), timeout=300)


def image_pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def test_skip_layer_guidance_gives_diffusers_pixels_and_reads_back(slg_services, flow_files):
    from diffusers import StableDiffusion3Pipeline

    job = run(slg_services, **SKIP)
    assert job.status == "done", job.error
    ours = image_pixels(job.result.images[0].png)
    pipeline = StableDiffusion3Pipeline.from_pretrained(str(flow_files["sd3_folder"]))
    pipeline.set_progress_bar_config(disable=True)
    expected = pipeline("a red cat", negative_prompt="", num_inference_steps=4, width=64, height=64,
                        guidance_scale=4.0, generator=torch.Generator().manual_seed(9), **SKIP).images[0]
    assert np.abs(ours - image_pixels_of(expected)).max() <= 1
    plain = run(slg_services)
    assert np.abs(ours - image_pixels(plain.result.images[0].png)).max() > 5
    infotext = job.result.images[0].infotext
    assert "SLG layers: 1, SLG scale: 8, SLG start: 0, SLG stop: 1" in infotext
    fields = request_fields(parse_infotext(infotext))
    assert fields["skip_layer_guidance_scale"] == 8 and fields["skip_layer_guidance_stop"] == 1
    assert Txt2ImgRequest(prompt="x", skip_guidance_layers=fields["skip_guidance_layers"]).skip_guidance_layers == [1]
    assert "SLG" not in plain.result.images[0].infotext


def image_pixels_of(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("fields, request_class, error_field, words", [
    ({"checkpoint": "flux-tiny"}, Txt2ImgRequest, "skip_guidance_layers", "SD3"),
    ({"init_image": b""}, Img2ImgRequest, "skip_guidance_layers", "txt2img"),
    ({"cfg_scale": 1.0}, Txt2ImgRequest, "cfg_scale", "above 1"),
    ({"skip_guidance_layers": [2]}, Txt2ImgRequest, "skip_guidance_layers", "0 to 1"),
])
def test_skip_layer_guidance_refused_by_name(slg_services, fields, request_class, error_field, words):
    if request_class is Img2ImgRequest:
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), "red").save(buffer, format="PNG")
        fields = {"init_image": buffer.getvalue()}
    job = run(slg_services, request_class, **{**SKIP, **fields})
    assert job.status == "failed" and job.error_field == error_field and words in job.error
    assert job.error_status < 500


def test_skip_layer_fields_validated():
    with pytest.raises(ValueError, match="skip_guidance_layers"):
        Txt2ImgRequest(prompt="a", skip_guidance_layers="7, x")
    with pytest.raises(ValueError, match="skip_layer_guidance_stop"):
        Txt2ImgRequest(prompt="a", skip_guidance_layers="7", skip_layer_guidance_start=0.5,
                       skip_layer_guidance_stop=0.2)
    assert Txt2ImgRequest(prompt="a", skip_guidance_layers="9, 7,8").skip_guidance_layers == [7, 8, 9]


def test_skip_layer_controls_show_for_sd3_only(slg_services):
    from ui.layout import build_ui
    from ui.model_picker import shows_skip_layers

    slg_services.select_checkpoint("sd3-tiny")
    blocks = {getattr(block, "elem_id", None): block for block in build_ui(slg_services).blocks.values()}
    assert blocks["skip_layer_guidance"].visible is True
    assert {"skip_guidance_layers", "skip_layer_guidance_scale", "skip_layer_guidance_start",
            "skip_layer_guidance_stop"} <= set(blocks)
    slg_services.select_checkpoint("flux-tiny")
    assert not shows_skip_layers(slg_services, "flux-tiny")


def test_rest_body_carries_skip_layer_guidance(slg_services):
    from backend.http.a1111 import txt2img_request
    from backend.http.bodies import Txt2ImgBody

    body = Txt2ImgBody(prompt="a", skip_guidance_layers="7,8", skip_layer_guidance_scale=3.0,
                       skip_layer_guidance_stop=0.3)
    request = txt2img_request(body, slg_services)
    assert request.skip_guidance_layers == [7, 8] and request.skip_layer_guidance_scale == 3.0
    assert request.skip_layer_guidance_stop == 0.3 and txt2img_request(Txt2ImgBody(prompt="a"),
                                                                       slg_services).skip_guidance_layers == []
