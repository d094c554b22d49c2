"""A1111's variation seed (subseed, strength), "Seed resize from", ENSD and the noise source: pixels, batches,
infotext round trips, REST fields."""
from __future__ import annotations

import base64
import io
import json
import os

import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from backend.core.infotext import parse_infotext, request_fields
from backend.core.requests import RequestError, Txt2ImgRequest, build_request
from backend.generation.noise import BatchNoise, NoiseOptions, slerp
from backend.http.routes import build_api_router
from tests.conftest import pixels, run_txt2img

DETERMINISTIC = {"sampler_name": "Euler", "prompt": "a red circle"}  # no noise after the first: exact comparisons


def image_pixels(job, index: int = 0) -> np.ndarray:
    return pixels(job.result.images[index].path)


def test_strength_zero_is_the_plain_seed_pixel_exact(services):
    plain = run_txt2img(services, seed=42, **DETERMINISTIC)
    zero = run_txt2img(services, seed=42, subseed=7, subseed_strength=0, **DETERMINISTIC)
    assert np.array_equal(image_pixels(plain), image_pixels(zero))
    assert "Variation seed" not in zero.result.images[0].infotext  # A1111 writes it only with a strength


def test_strength_one_is_the_variation_seeds_image_and_between_is_between(services):
    seed_image = image_pixels(run_txt2img(services, seed=42, **DETERMINISTIC))
    subseed_image = image_pixels(run_txt2img(services, seed=7, **DETERMINISTIC))
    full = run_txt2img(services, seed=42, subseed=7, subseed_strength=1, **DETERMINISTIC)
    assert np.array_equal(image_pixels(full), subseed_image)
    between = image_pixels(run_txt2img(services, seed=42, subseed=7, subseed_strength=0.3, **DETERMINISTIC))
    apart = np.abs(seed_image - subseed_image).mean()
    to_seed, to_subseed = np.abs(between - seed_image).mean(), np.abs(between - subseed_image).mean()
    assert 0 < to_seed < to_subseed < apart  # 0.3: nearer the seed's image, yet changed
    parsed = parse_infotext(full.result.images[0].infotext)
    assert parsed["Seed"] == "42" and parsed["Variation seed"] == "7" and parsed["Variation seed strength"] == "1"


def test_batch_keeps_the_seed_and_counts_the_variation_seed_up(services):
    """As A1111: with a variation strength, every image has the seed and image i the variation seed + i."""
    batch = run_txt2img(services, seed=42, subseed=7, subseed_strength=0.5, batch_size=2, n_iter=2, **DETERMINISTIC)
    images = batch.result.images
    assert [image.seed for image in images] == [42] * 4 and [image.subseed for image in images] == [7, 8, 9, 10]
    assert [parse_infotext(image.infotext)["Variation seed"] for image in images] == ["7", "8", "9", "10"]
    single = run_txt2img(services, seed=42, subseed=10, subseed_strength=0.5, **DETERMINISTIC)
    assert np.abs(image_pixels(batch, 3) - image_pixels(single)).max() <= 1
    assert np.abs(image_pixels(batch, 0) - image_pixels(batch, 1)).mean() > 0.5
    plain = run_txt2img(services, seed=42, subseed=7, batch_size=2, **DETERMINISTIC).result.images
    assert [image.seed for image in plain] == [42, 43]  # without a strength: seed + i


def test_resized_noise_keeps_the_smaller_sizes_noise_in_the_centre():
    small, _ = BatchNoise([5], [0], NoiseOptions()).initial((4, 8, 8), "cpu", torch.float32)
    wide, _ = BatchNoise([5], [0], NoiseOptions(resize_from=(64, 64))).initial((4, 8, 12), "cpu", torch.float32)
    assert torch.equal(wide[..., 2:10], small)  # centred, the rest the seed's noise at the new size
    plain_wide, _ = BatchNoise([5], [0], NoiseOptions()).initial((4, 8, 12), "cpu", torch.float32)
    assert torch.equal(wide[..., :2], plain_wide[..., :2]) and not torch.equal(plain_wide[..., 2:10], small)
    narrow, _ = BatchNoise([5], [0], NoiseOptions(resize_from=(64, 64))).initial((4, 8, 4), "cpu", torch.float32)
    assert torch.equal(narrow, small[..., 2:6])  # larger than the target: cropped to its centre


def test_seed_resize_from_keeps_the_layout_when_the_size_changes(services):
    square = image_pixels(run_txt2img(services, seed=5, **DETERMINISTIC))
    resized = run_txt2img(services, seed=5, width=96, seed_resize_from_w=64, seed_resize_from_h=64, **DETERMINISTIC)
    plain = run_txt2img(services, seed=5, width=96, **DETERMINISTIC)
    kept = np.abs(image_pixels(resized)[:, 16:80] - square).mean()
    assert kept < np.abs(image_pixels(plain)[:, 16:80] - square).mean()
    assert parse_infotext(resized.result.images[0].infotext)["Seed resize from"] == "64x64"


def test_slerp_ends_are_its_inputs():
    low, high = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(1)), torch.randn(4, 8, 8)
    assert torch.equal(slerp(0.0, low, high), low) and torch.allclose(slerp(1.0, low, high), high, atol=1e-6)
    middle = slerp(0.5, low, high)
    assert middle.std() > 0.9  # spherical: no loss of variance, as a linear blend would have (~0.7)


def test_eta_noise_seed_delta_changes_only_the_samplers_later_noise(services):
    ancestral = {"prompt": "stars", "sampler_name": "Euler a", "seed": 3}
    base = image_pixels(run_txt2img(services, **ancestral))
    delta = run_txt2img(services, **ancestral, eta_noise_seed_delta=31337)
    assert np.abs(image_pixels(delta) - base).mean() > 0.5
    assert parse_infotext(delta.result.images[0].infotext)["ENSD"] == "31337"
    assert np.array_equal(image_pixels(run_txt2img(services, **ancestral, eta_noise_seed_delta=31337)),
                          image_pixels(delta))
    # a sampler without later noise is unchanged by it
    euler = image_pixels(run_txt2img(services, seed=3, **DETERMINISTIC))
    assert np.array_equal(image_pixels(run_txt2img(services, seed=3, eta_noise_seed_delta=31337, **DETERMINISTIC)),
                          euler)


def test_gpu_noise_source_on_a_cpu_server_is_the_same_noise_and_says_so(services):
    cpu = run_txt2img(services, seed=9, **DETERMINISTIC)
    gpu = run_txt2img(services, seed=9, randn_source="GPU", **DETERMINISTIC)  # the device is the CPU here
    assert np.array_equal(image_pixels(cpu), image_pixels(gpu))
    assert "RNG" not in cpu.result.images[0].infotext
    assert parse_infotext(gpu.result.images[0].infotext)["RNG"] == "GPU"


def test_variation_in_hires_fix_and_img2img(services):
    hires = dict(enable_hr=True, hr_scale=1.5, denoising_strength=0.6, seed=4, **DETERMINISTIC)
    plain = image_pixels(run_txt2img(services, **hires))
    assert np.array_equal(image_pixels(run_txt2img(services, **hires, subseed=8, subseed_strength=0)), plain)
    varied = image_pixels(run_txt2img(services, **hires, subseed=8, subseed_strength=0.6))
    assert varied.shape == plain.shape and np.abs(varied - plain).mean() > 0.5


@pytest.mark.parametrize("fields, field", [
    ({"subseed_strength": 1.5}, "subseed_strength"), ({"subseed": -2}, "subseed"),
    ({"seed_resize_from_w": 32}, "seed_resize_from_w"), ({"randn_source": "XPU"}, "randn_source"),
    ({"eta_noise_seed_delta": -1}, "eta_noise_seed_delta"), ({"tiling_axes": "Z"}, "tiling_axes"),
])
def test_bad_noise_fields_name_the_field(fields, field):
    with pytest.raises(RequestError) as error:
        build_request(Txt2ImgRequest, fields)
    assert error.value.field == field


def test_infotext_round_trip_of_the_noise_keys():
    text = ("p\nSteps: 20, Sampler: Euler, Seed: 1, Size: 512x512, Variation seed: 7, Variation seed strength: 0.3, "
            "Seed resize from: 256x320, ENSD: 31337, RNG: GPU, Tiling: True")
    fields = request_fields(parse_infotext(text))
    assert (fields["subseed"], fields["subseed_strength"], fields["eta_noise_seed_delta"]) == (7, 0.3, 31337)
    assert (fields["seed_resize_from_w"], fields["seed_resize_from_h"]) == (256, 320)
    assert fields["randn_source"] == "GPU" and fields["tiling"] is True
    build_request(Txt2ImgRequest, {key: value for key, value in fields.items()
                                   if key not in ("model_hash", "model_name")})


def test_rest_fields_and_info(services):
    app = FastAPI()
    app.include_router(build_api_router(services))
    with TestClient(app) as client:
        body = {"prompt": "p", "steps": 3, "width": 64, "height": 64, "seed": 3, "subseed": 11,
                "subseed_strength": 0.4, "batch_size": 2, "seed_resize_from_w": 64, "seed_resize_from_h": 64,
                "override_settings": {"eta_noise_seed_delta": 31337, "randn_source": "CPU"}}
        response = client.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 200, response.text
        info = json.loads(response.json()["info"])
        assert info["all_seeds"] == [3, 3] and info["all_subseeds"] == [11, 12]
        assert info["subseed_strength"] == 0.4 and info["seed_resize_from_w"] == 64
        parsed = parse_infotext(info["infotexts"][1])
        assert parsed["Variation seed"] == "12" and parsed["ENSD"] == "31337"
        Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))).verify()
        bad = client.post("/sdapi/v1/txt2img", json={**body, "subseed_strength": 2})
        assert bad.status_code == 422 and "subseed_strength" in bad.json()["detail"]


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_variation_seed_on_sd2_and_sdxl(make_services, checkpoint_files, tmp_path, family):
    folder = tmp_path / family / "Stable-diffusion"
    folder.mkdir(parents=True)
    os.link(checkpoint_files[family], folder / checkpoint_files[family].name)
    services = make_services(models_dir=folder.parent)
    plain = image_pixels(run_txt2img(services, seed=2, **DETERMINISTIC))
    assert np.array_equal(image_pixels(run_txt2img(services, seed=2, subseed=5, subseed_strength=0,
                                                   **DETERMINISTIC)), plain)
    full = image_pixels(run_txt2img(services, seed=2, subseed=5, subseed_strength=1, **DETERMINISTIC))
    assert np.array_equal(full, image_pixels(run_txt2img(services, seed=5, **DETERMINISTIC)))


def test_xyz_plot_var_seed_and_strength_axes():
    from extensions.xyz_plot import axes

    request = Txt2ImgRequest(steps=2, width=64, height=64, seed=1,
                             extension_args={"xyz_plot": {"x_type": "Var. strength", "x_values": "0, 0.5",
                                                          "y_type": "Var. seed", "y_values": "-1, 7"}})
    plot = axes.plan_plot(request, "xyz_plot")
    cells = [cell.request for cell in plot.cells]
    assert [(cell.subseed_strength, cell.subseed) for cell in cells][2:] == [(0.0, 7), (0.5, 7)]
    assert cells[0].subseed != -1 and plot.x.label(1) == "Var. strength: 0.5"


@pytest.mark.parametrize("mask, strength", [(None, 0.6), (None, 1.0), ("half", 0.6), ("half", 1.0)])
def test_variation_in_img2img_and_inpaint(services, mask, strength):
    from backend.core.requests import Img2ImgRequest

    def png(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    mask_image = Image.new("L", (64, 64), 0)
    mask_image.paste(255, (0, 0, 32, 64))
    fields = dict(prompt="p", steps=4, width=64, height=64, seed=5, sampler_name="Euler",
                  init_image=png(Image.new("RGB", (64, 64), (200, 40, 30))), denoising_strength=strength,
                  mask=png(mask_image) if mask else None)

    def run(**extra):
        job = services.jobs.run_and_wait(Img2ImgRequest(**{**fields, **extra}), timeout=300)
        assert job.status == "done", job.error
        return pixels(job.result.images[0].path)

    plain = run()
    assert np.array_equal(run(subseed=9, subseed_strength=0), plain)
    varied = run(subseed=9, subseed_strength=0.7)
    assert np.abs(varied - plain).mean() > 0.2
    full, subseed_image = run(subseed=9, subseed_strength=1), run(seed=9)
    if mask or strength == 1:
        assert np.array_equal(full, subseed_image)
    else:  # the pipeline samples the VAE's latents with the seed's generator: the noise alone follows the subseed
        assert np.abs(full - subseed_image).mean() < np.abs(plain - subseed_image).mean()
    if mask:  # outside the mask the input stays, variation or not
        assert np.array_equal(varied[:, 48:], plain[:, 48:])
