"""A1111 1.6+ hires fix options: the second pass's sampler, schedule type, prompts and CFG (Forge's Hires CFG
Scale): what they change, their infotext keys read back, REST fields and errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from backend.core.infotext import parse_infotext, request_fields
from backend.core.requests import RequestError, Txt2ImgRequest, build_request
from backend.http.routes import build_api_router
from tests.conftest import pixels, run_txt2img

HIRES = dict(prompt="a red circle", negative_prompt="blurry", seed=6, sampler_name="Euler", enable_hr=True,
             hr_scale=1.5, denoising_strength=0.6, hr_second_pass_steps=8)


def result(services, **fields):
    job = run_txt2img(services, **{**HIRES, **fields})
    assert job.status == "done", job.error
    image = job.result.images[0]
    return pixels(image.path), parse_infotext(image.infotext)


def test_each_option_changes_the_second_pass_and_the_same_value_changes_nothing(services):
    base, base_info = result(services)
    for key in ("Hires sampler", "Hires schedule type", "Hires prompt", "Hires negative prompt", "Hires CFG Scale"):
        assert key not in base_info
    same, info = result(services, hr_sampler_name="Euler", hr_prompt=HIRES["prompt"],
                        hr_negative_prompt=HIRES["negative_prompt"], hr_cfg=5.0)  # FAST's cfg_scale is 5
    assert np.array_equal(same, base) and "Hires sampler" not in info and "Hires CFG Scale" not in info
    changes = {"hr_sampler_name": ("DPM++ 2M", "Hires sampler"), "hr_scheduler": ("Karras", "Hires schedule type"),
               "hr_prompt": ("a green square", "Hires prompt"),
               "hr_negative_prompt": ("sharp", "Hires negative prompt"),
               "hr_cfg": (12.0, "Hires CFG Scale")}
    for field, (value, key) in changes.items():
        image, info = result(services, **{field: value})
        assert image.shape == base.shape and np.abs(image - base).mean() > 0.2, field
        assert info[key] == str(value).removesuffix(".0"), field
        assert request_fields(info)[field] == value, field
        first_pass_only = {name: info[name] for name in ("Sampler", "CFG scale")}
        assert first_pass_only == {"Sampler": "Euler", "CFG scale": "5"}


def test_hires_sampler_infotext_from_a1111_fills_the_request():
    text = ("p\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 64x64, "
            "Denoising strength: 0.5, Hires upscale: 2, Hires upscaler: Latent, Hires sampler: Euler a, "
            "Hires schedule type: Automatic, Hires prompt: \"a, b\", Hires CFG Scale: 4")
    fields = request_fields(parse_infotext(text))
    request = build_request(Txt2ImgRequest, fields)
    assert (request.hr_sampler_name, request.hr_scheduler, request.hr_prompt, request.hr_cfg) == (
        "Euler a", "Automatic", "a, b", 4.0)
    assert request.hires_sampler()[0] == "Euler a"


@pytest.mark.parametrize("fields, field", [({"hr_sampler_name": "Nope"}, "hr_sampler_name"),
                                           ({"hr_scheduler": "Sideways"}, "hr_scheduler"),
                                           ({"hr_cfg": 99.0}, "hr_cfg")])
def test_bad_hires_options_name_their_field(fields, field):
    with pytest.raises(RequestError) as error:
        build_request(Txt2ImgRequest, {"enable_hr": True, **fields})
    assert error.value.field == field


def test_rest_hires_options(services):
    app = FastAPI()
    app.include_router(build_api_router(services))
    body = {"prompt": "p", "steps": 3, "width": 64, "height": 64, "seed": 3, "enable_hr": True, "hr_scale": 1.5,
            "sampler_name": "Euler", "hr_sampler_name": "Use same sampler", "hr_scheduler": "Use same scheduler"}
    with TestClient(app) as client:
        same = client.post("/sdapi/v1/txt2img", json=body)
        assert same.status_code == 200, same.text
        assert "Hires sampler" not in json.loads(same.json()["info"])["infotexts"][0]
        other = client.post("/sdapi/v1/txt2img", json={**body, "hr_sampler_name": "Euler a", "hr_cfg": 3,
                                                       "hr_negative_prompt": "ugly"})
        assert other.status_code == 200, other.text
        infotext = parse_infotext(json.loads(other.json()["info"])["infotexts"][0])
        assert infotext["Hires sampler"] == "Euler a" and infotext["Hires CFG Scale"] == "3"
        assert infotext["Hires negative prompt"] == "ugly"
        bad = client.post("/sdapi/v1/txt2img", json={**body, "hr_sampler_name": "Nope"})
        assert bad.status_code == 422 and bad.json()["detail"].startswith("hr_sampler_name:")


def test_naming_the_jobs_own_checkpoint_for_the_hires_pass_applies_its_lora_once(make_services, models_dir):
    from tests.tiny_networks import write_kohya_lora

    write_kohya_lora(models_dir / "Lora" / "style.safetensors", seed=1, scale=2.0)
    services = make_services()
    fields = dict(checkpoint="tiny-sd1.safetensors", prompt="a red circle <lora:style:1>")
    with_lora, _ = result(services, **fields)
    assert np.abs(with_lora - result(services, checkpoint="tiny-sd1.safetensors")[0]).mean() > 0.5
    same, _ = result(services, **fields, hr_checkpoint_name="tiny-sd1.safetensors")
    assert np.array_equal(same, with_lora)


def test_hires_checkpoint_runs_the_second_pass(services):
    fields = dict(checkpoint="tiny-sd1.safetensors")
    base, _ = result(services, **fields)
    same, same_info = result(services, **fields, hr_checkpoint_name="tiny-sd1.safetensors")
    assert np.array_equal(same, base) and "Hires checkpoint" not in same_info
    other, info = result(services, **fields, hr_checkpoint_name="tiny-sd1-other.safetensors")
    assert np.abs(other - base).mean() > 0.5
    entry = services.models.resolve("tiny-sd1-other.safetensors")
    assert info["Hires checkpoint"] == f"{entry.model_name} [{entry.short_hash}]"
    assert info["Model"] == "tiny-sd1"  # the first pass's checkpoint stays the image's model
    pasted = request_fields(info)
    again, _ = result(services, **fields, hr_checkpoint_name=pasted["hr_checkpoint_name"])  # A1111's short title
    assert np.array_equal(again, other)
    missing = run_txt2img(services, **{**HIRES, "hr_checkpoint_name": "nope"})
    assert missing.status == "failed" and missing.error.startswith("hr_checkpoint_name")


def test_rest_hires_checkpoint(services):
    app = FastAPI()
    app.include_router(build_api_router(services))
    body = {"prompt": "p", "steps": 3, "width": 64, "height": 64, "seed": 3, "enable_hr": True, "hr_scale": 1.5,
            "sampler_name": "Euler", "hr_checkpoint_name": "Use same checkpoint",
            "override_settings": {"sd_model_checkpoint": "tiny-sd1"}}
    with TestClient(app) as client:
        assert client.post("/sdapi/v1/txt2img", json=body).status_code == 200
        other = client.post("/sdapi/v1/txt2img", json={**body, "hr_checkpoint_name": "tiny-sd1-other"})
        assert other.status_code == 200, other.text
        assert "Hires checkpoint: tiny-sd1-other [" in json.loads(other.json()["info"])["infotexts"][0]
        bad = client.post("/sdapi/v1/txt2img", json={**body, "hr_checkpoint_name": "nope"})
        assert bad.status_code == 422 and bad.json()["detail"].startswith("hr_checkpoint_name:")
