"""Hires fix in txt2img: final size, a second pass that depends on the denoising strength, A1111 infotext."""
from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from backend.core.hires_sizes import hires_sizes
from backend.core.infotext import parse_infotext, request_fields
from backend.core.requests import RequestError, Txt2ImgRequest, build_request
from backend.http.routes import build_api_router
from tests.conftest import run_txt2img
from tests.tiny_upscalers import write_upscaler_folder

HIRES = dict(enable_hr=True, seed=11, prompt="a blue circle", hr_second_pass_steps=4)


def image_of(job, index: int = 0) -> Image.Image:
    assert job.status == "done", job.error
    return Image.open(io.BytesIO(job.result.images[index].png))


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_latent_hires_gives_the_final_size_and_a1111_infotext(services):
    job = run_txt2img(services, **HIRES, hr_scale=1.5, denoising_strength=0.5)
    image = image_of(job)
    assert image.size == (96, 96)
    infotext = job.result.images[0].infotext
    assert "Size: 64x64" in infotext  # A1111 writes the first pass's size
    assert "Denoising strength: 0.5, Hires upscale: 1.5, Hires steps: 4, Hires upscaler: Latent" in infotext
    fields = request_fields(parse_infotext(infotext))
    assert {key: fields[key] for key in ("enable_hr", "hr_scale", "hr_second_pass_steps", "hr_upscaler",
                                         "denoising_strength", "width", "height")} == {
        "enable_hr": True, "hr_scale": 1.5, "hr_second_pass_steps": 4, "hr_upscaler": "Latent",
        "denoising_strength": 0.5, "width": 64, "height": 64}
    again = build_request(Txt2ImgRequest, {k: v for k, v in fields.items() if k not in ("model_hash", "model_name")})
    assert again.enable_hr and again.hr_scale == 1.5
    decoded_only = image_of(run_txt2img(services, **HIRES, hr_scale=1.5, denoising_strength=0.0))
    assert decoded_only.size == (96, 96)  # strength 0: the upscaled latents, decoded
    assert np.abs(as_array(decoded_only) - as_array(image)).mean() > 1


def test_a1111_hires_resize_infotext_fills_the_request():
    fields = request_fields(parse_infotext(
        "castle\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x512, Denoising strength: 0.45, "
        "Hires resize: 1024x768, Hires upscaler: R-ESRGAN 4x+"))
    assert (fields["enable_hr"], fields["hr_resize_x"], fields["hr_resize_y"], fields["hr_upscaler"],
            fields["denoising_strength"]) == (True, 1024, 768, "R-ESRGAN 4x+", 0.45)
    plain = request_fields(parse_infotext("cat\nSteps: 30, Sampler: Euler, CFG scale: 5, Seed: 9, Size: 64x64"))
    assert "enable_hr" not in plain


def test_second_pass_depends_on_the_denoising_strength(services):
    plain = image_of(run_txt2img(services, seed=11, prompt="a blue circle"))
    untouched = image_of(run_txt2img(services, **HIRES, hr_upscaler="Lanczos", denoising_strength=0.0))
    # strength 0: the second pass leaves the upscaled first pass exactly as it is
    assert np.array_equal(as_array(untouched), as_array(plain.resize((128, 128), Image.LANCZOS)))
    light = as_array(image_of(run_txt2img(services, **HIRES, hr_upscaler="Lanczos", denoising_strength=0.3)))
    strong = as_array(image_of(run_txt2img(services, **HIRES, hr_upscaler="Lanczos", denoising_strength=0.9)))
    base = as_array(untouched)
    assert np.abs(light - base).mean() > 1  # the second pass did change the image
    assert np.abs(strong - base).mean() > np.abs(light - base).mean()  # and more so with more strength
    light_again = as_array(image_of(run_txt2img(services, **HIRES, hr_upscaler="Lanczos", denoising_strength=0.3)))
    assert np.array_equal(light, light_again)  # the same seed gives the same second pass


def test_resize_to_another_aspect_crops_to_the_exact_size(services):
    job = run_txt2img(services, **HIRES, hr_resize_x=128, hr_resize_y=64, hr_upscaler="Latent (nearest-exact)",
                      denoising_strength=0.6)
    assert image_of(job).size == (128, 64)
    assert "Hires resize: 128x64" in job.result.images[0].infotext
    assert "Hires upscale:" not in job.result.images[0].infotext
    assert hires_sizes(64, 64, 2.0, 128, 64).upscaled == (128, 128)


def test_an_upscaler_model_as_hires_upscaler(services, models_dir):
    write_upscaler_folder(models_dir)
    services.upscalers.refresh()
    job = run_txt2img(services, **HIRES, hr_upscaler="tiny-compact-x2", denoising_strength=0.0)
    image = image_of(job)
    assert image.size == (128, 128) and "Hires upscaler: tiny-compact-x2" in job.result.images[0].infotext
    lanczos = image_of(run_txt2img(services, **HIRES, hr_upscaler="Lanczos", denoising_strength=0.0))
    assert np.abs(as_array(image) - as_array(lanczos)).mean() > 1  # the model, not a resize, made it


def test_unknown_hires_upscaler_fails_before_the_first_pass(services):
    job = run_txt2img(services, **HIRES, hr_upscaler="R-ESRGAN 4x+")
    assert job.status == "failed" and job.error_field == "hr_upscaler"
    assert "no upscaler named 'R-ESRGAN 4x+'; available: None, Lanczos, Nearest" in job.error
    assert job.progress.step == 0  # nothing was sampled


@pytest.mark.parametrize("fields,field,message", [
    ({"hr_scale": 1.3}, "hr_scale", "83x83"),
    ({"hr_scale": 0.5}, "hr_scale", "between 1.0 and 8.0"),
    ({"hr_scale": 40.0}, "hr_scale", "between 1.0 and 8.0"),
    ({"width": 512, "height": 512, "hr_scale": 8.0}, "hr_scale", "4096x4096"),
    ({"hr_resize_x": 100}, "hr_resize_x", "multiple of 8"),
    ({"hr_resize_x": 96, "width": 64, "height": 72}, "hr_resize_x", "96x108"),
    ({"denoising_strength": 1.2}, "denoising_strength", "between 0 and 1"),
    ({"denoising_strength": 0.1, "steps": 3}, "denoising_strength", "runs no step"),
    ({"hr_second_pass_steps": 151}, "hr_second_pass_steps", "between 0 and 150"),
])
def test_bad_hires_fields_name_the_field(fields, field, message):
    with pytest.raises(RequestError) as error:
        build_request(Txt2ImgRequest, {"enable_hr": True, "width": 64, "height": 64, "steps": 3, **fields})
    assert error.value.field == field and message in str(error.value)


def test_hires_fields_are_inert_without_enable_hr(services):
    request = build_request(Txt2ImgRequest, {"hr_scale": 1.3, "width": 64, "height": 64})
    assert not request.enable_hr


def test_api_txt2img_with_hires(services):
    app = FastAPI()
    app.include_router(build_api_router(services))
    with TestClient(app) as client:
        body = {"prompt": "p", "steps": 3, "width": 64, "height": 64, "seed": 3, "enable_hr": True,
                "hr_scale": 1.5, "hr_upscaler": "Latent (bicubic antialiased)", "hr_sampler_name": "Use same sampler",
                "hr_prompt": ""}
        response = client.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 200, response.text
        import base64
        import json

        image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
        info = json.loads(response.json()["info"])
        assert image.size == (96, 96) and info["denoising_strength"] == 0.75  # A1111's API default
        assert "Hires upscaler: Latent (bicubic antialiased)" in info["infotexts"][0]
        missing = client.post("/sdapi/v1/txt2img", json={**body, "hr_upscaler": "4x-UltraSharp"})
        assert missing.status_code == 422 and "hr_upscaler: no upscaler named" in missing.json()["detail"]
        other_prompt = client.post("/sdapi/v1/txt2img", json={**body, "hr_prompt": "something else"})
        assert other_prompt.status_code == 200, other_prompt.text
        assert "Hires prompt: something else" in json.loads(other_prompt.json()["info"])["infotexts"][0]
