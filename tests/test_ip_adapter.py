"""IP-Adapter units as sd-webui-controlnet exposes them (an `ip-adapter_*` preprocessor and model), in process with a
tiny CLIP vision encoder and tiny adapters shaped for the tiny UNets: listed, the image changes, weight 0 and a
start at the end leave it pixel-exact, start/end honoured, nothing left on the cached model, the REST unit, and
the refusals naming the field."""
from __future__ import annotations

import base64
import io
import json
import os

import numpy as np
import pytest
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from backend.controlnet.ip_adapter_files import read_ip_adapter
from backend.core.infotext import parse_infotext
from backend.core.requests import Txt2ImgRequest
from backend.http.routes import build_api_router, build_controlnet_router
from tests.conftest import FAST
from tools.tiny_ip_adapter import write_tiny_clip_vision, write_tiny_ip_adapter


@pytest.fixture(scope="module")
def adapter_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ipadapter")
    return {"sd15": write_tiny_ip_adapter(root / "ip-adapter_sd15.safetensors", "sd1", seed=1),
            "sd15_bin": write_tiny_ip_adapter(root / "ip-adapter_sd15.bin", "sd1", seed=1),
            "sdxl": write_tiny_ip_adapter(root / "ip-adapter_sdxl.safetensors", "sdxl", seed=2),
            "encoder": write_tiny_clip_vision(root / "clip_h.safetensors", seed=3)}


@pytest.fixture
def services(make_services, models_dir, adapter_files):
    for folder, key in (("ControlNet", "sd15"), ("ipadapter", "sdxl"), ("clip_vision", "encoder")):
        (models_dir / folder).mkdir(exist_ok=True)
        os.link(adapter_files[key], models_dir / folder / adapter_files[key].name)
    return make_services()


def reference_png(size=64) -> bytes:
    image = Image.new("RGB", (size, size), (20, 40, 200))
    ImageDraw.Draw(image).ellipse((8, 8, 40, 40), fill=(250, 200, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def unit(**fields) -> dict:
    return {"module": "ip-adapter_clip_sd15", "model": "ip-adapter_sd15", "image": reference_png(), **fields}


def run(services, **fields):
    request = services.build_request(Txt2ImgRequest, {**FAST, "seed": 5, "save_images": False, "prompt": "a cat",
                                                      **fields})
    return services.jobs.run_and_wait(request, timeout=300)


def generate(services, **fields):
    job = run(services, **fields)
    assert job.status == "done", job.error
    return job.result


def pixels(result) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(result.images[0].png)).convert("RGB"), dtype=np.int16)


def cached_unet(services):
    with services.models.lease(None) as (_entry, model):
        return model.pipeline.unet


def test_a_unit_changes_the_image_weight_0_is_exact_and_the_cached_model_is_restored(services):
    plain = pixels(generate(services))
    adapted = generate(services, controlnet_units=[unit()])
    assert np.abs(pixels(adapted) - plain).mean() > 1
    text = parse_infotext(adapted.images[0].infotext)["ControlNet 0"]
    assert text.startswith("Module: ip-adapter_clip_sd15, Model: ip-adapter_sd15 [") and "Weight: 1.0" in text
    assert np.array_equal(pixels(generate(services, controlnet_units=[unit(weight=0)])), plain)
    unet = cached_unet(services)
    assert unet.encoder_hid_proj is None and unet.config.encoder_hid_dim_type is None
    assert not any(isinstance(p, IPAdapterAttnProcessor2_0) for p in unet.attn_processors.values())
    assert np.array_equal(pixels(generate(services)), plain)  # the next plain job: as before


def test_start_and_end_are_honoured(services):
    plain = pixels(generate(services))
    whole = pixels(generate(services, controlnet_units=[unit()]))
    early = pixels(generate(services, controlnet_units=[unit(guidance_end=0.5)]))  # step 1 of 3
    late = pixels(generate(services, controlnet_units=[unit(guidance_start=0.5)]))  # step 3 of 3
    assert np.abs(early - whole).mean() > 0.5 and np.abs(early - plain).mean() > 0.5
    assert (late != plain).any() and np.abs(late - whole).mean() > 0.5
    assert np.array_equal(pixels(generate(services, controlnet_units=[unit(guidance_start=1.0)])), plain)


def test_listed_with_the_controlnets_and_their_preprocessors(services):
    client_app = FastAPI()
    client_app.include_router(build_controlnet_router(services))
    with TestClient(client_app) as client:
        models = client.get("/controlnet/model_list").json()["model_list"]
        modules = client.get("/controlnet/module_list").json()["module_list"]
    assert any(m.startswith("ip-adapter_sd15 [") for m in models)  # models/ControlNet
    assert any(m.startswith("ip-adapter_sdxl [") for m in models)  # models/ipadapter
    assert {"ip-adapter_clip_sd15", "ip-adapter_clip_sdxl", "ip-adapter_clip_sdxl_plus_vith"} <= set(modules)


def test_the_rest_unit_via_alwayson_scripts(services):
    app = FastAPI()
    app.include_router(build_api_router(services))
    with TestClient(app) as client:
        body = {**FAST, "seed": 5, "prompt": "a cat"}
        plain = client.post("/sdapi/v1/txt2img", json=body)
        cn_unit = {"enabled": True, "module": "ip-adapter_clip_sd15", "model": "ip-adapter_sd15",
                   "weight": 1.0, "image": base64.b64encode(reference_png()).decode()}
        adapted = client.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {
            "controlnet": {"args": [cn_unit]}}})
    assert plain.status_code == 200 and adapted.status_code == 200, adapted.text

    def decoded(data):
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"), dtype=np.int16)

    assert np.abs(decoded(adapted.json()["images"][0]) - decoded(plain.json()["images"][0])).mean() > 1
    infotext = json.loads(adapted.json()["info"])["infotexts"][0]
    assert 'ControlNet 0: "Module: ip-adapter_clip_sd15, Model: ip-adapter_sd15 [' in infotext


def test_refusals_name_the_field(services, models_dir):
    job = run(services, controlnet_units=[unit(model="ip-adapter_sdxl")])
    assert job.status == "failed" and "controlnet_units.0.model" in job.error and "is SD1.x" in job.error
    job = run(services, controlnet_units=[unit(module="canny")])
    assert job.status == "failed" and "controlnet_units.0.module" in job.error
    for path in (models_dir / "clip_vision").iterdir():
        path.unlink()
    job = run(services, controlnet_units=[unit()])
    assert job.status == "failed" and "controlnet_units.0.module" in job.error and "clip_vision" in job.error


def test_the_bin_layout_reads_as_the_safetensors_one(adapter_files, services):
    from backend.controlnet.model_files import ControlNetEntry

    flat = read_ip_adapter(ControlNetEntry("a", adapter_files["sd15"], "0"))
    nested = read_ip_adapter(ControlNetEntry("b", adapter_files["sd15_bin"], "0"))
    assert flat.cross_attention_dim == nested.cross_attention_dim == 32 and not flat.plus
    for part in ("image_proj", "ip_adapter"):
        assert flat.state[part].keys() == nested.state[part].keys()
        assert all(np.array_equal(flat.state[part][key], nested.state[part][key]) for key in flat.state[part])


def test_an_sdxl_adapter_steers_an_sdxl_checkpoint(services, models_dir, checkpoint_files):
    os.link(checkpoint_files["sdxl"], models_dir / "Stable-diffusion" / checkpoint_files["sdxl"].name)
    services.models.refresh()
    xl = {"checkpoint": checkpoint_files["sdxl"].name}
    plain = pixels(generate(services, **xl))
    adapted = generate(services, **xl, controlnet_units=[unit(module="ip-adapter_clip_sdxl",
                                                              model="ip-adapter_sdxl")])
    assert np.abs(pixels(adapted) - plain).mean() > 1


def test_the_accordion_offers_ip_adapter_models_and_preprocessors(services):
    from ui.controlnet_units import model_choices, preprocessor_labels  # what the unit dropdowns are filled with

    models = model_choices(services)
    assert any(m.startswith("ip-adapter_sd15 [") for m in models) and any(m.startswith("ip-adapter_sdxl [")
                                                                           for m in models)
    assert {"ip-adapter_clip_sd15", "ip-adapter_clip_sdxl_plus_vith"} <= set(preprocessor_labels(services))


def test_hires_fix_passes_follow_hr_option(services):
    hires = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "denoising_strength": 0.9,
             "hr_second_pass_steps": 3, "steps": 2}
    plain = pixels(generate(services, **hires))
    images = {option: pixels(generate(services, **hires, controlnet_units=[unit(hr_option=option)]))
              for option in ("Low res only", "High res only")}
    for option, image in images.items():
        assert image.shape == plain.shape == (96, 96, 3) and np.abs(image - plain).mean() > 0.5, option
    assert np.abs(images["Low res only"] - images["High res only"]).mean() > 0.5


def test_a_batch_of_two_gets_the_reference_on_every_image(services):
    plain = generate(services, batch_size=2)
    adapted = generate(services, batch_size=2, controlnet_units=[unit()])
    for index in range(2):
        before = np.asarray(Image.open(io.BytesIO(plain.images[index].png)).convert("RGB"), dtype=np.int16)
        after = np.asarray(Image.open(io.BytesIO(adapted.images[index].png)).convert("RGB"), dtype=np.int16)
        assert np.abs(after - before).mean() > 1, index


def test_without_guidance_the_unit_still_applies(services):
    plain = pixels(generate(services, cfg_scale=1))
    assert np.abs(pixels(generate(services, cfg_scale=1, controlnet_units=[unit()])) - plain).mean() > 1


def test_img2img_and_inpainting_take_the_unit(services):
    from backend.core.requests import Img2ImgRequest

    def img2img(**fields):
        request = services.build_request(Img2ImgRequest, {**FAST, "seed": 5, "save_images": False, "prompt": "a cat",
                                                          "init_image": reference_png(), "denoising_strength": 0.8,
                                                          **fields})
        job = services.jobs.run_and_wait(request, timeout=300)
        assert job.status == "done", job.error
        return pixels(job.result)

    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    for extra in ({}, {"mask": buffer.getvalue()}):
        plain = img2img(**extra)
        adapted = img2img(**extra, controlnet_units=[unit(image=None)])  # the img2img input is the reference
        assert np.abs(adapted - plain).mean() > 0.5, extra


def test_together_with_a_controlnet_unit(services, models_dir):
    from tools.tiny_controlnets import write_tiny_controlnet

    write_tiny_controlnet(models_dir / "ControlNet" / "control_sd15_canny.safetensors", "sd1", seed=1, strength=0.3)
    canny = {"module": "canny", "model": "control_sd15_canny", "image": reference_png(), "processor_res": 64}
    controlled = pixels(generate(services, controlnet_units=[canny]))
    adapted = pixels(generate(services, controlnet_units=[unit()]))
    both = generate(services, controlnet_units=[canny, unit()])
    assert np.abs(pixels(both) - controlled).mean() > 0.5 and np.abs(pixels(both) - adapted).mean() > 0.5
    assert {"ControlNet 0", "ControlNet 1"} <= set(parse_infotext(both.images[0].infotext))


def test_the_image_encoder_is_built_once_and_kept_in_the_controlnet_cache(services, monkeypatch):
    import backend.generation.controlnet_run as controlnet_run

    built = []
    original = controlnet_run.build_image_encoder
    monkeypatch.setattr(controlnet_run, "build_image_encoder", lambda *args: built.append(args) or original(*args))
    first = pixels(generate(services, controlnet_units=[unit()]))
    second = pixels(generate(services, controlnet_units=[unit(weight=0.5)]))
    again = pixels(generate(services, controlnet_units=[unit()]))
    assert len(built) == 1  # the second and third jobs reuse it
    assert np.array_equal(first, again) and np.abs(first - second).mean() > 0.5
    services.controlnets.clear()  # out of memory: dropped with the unused ControlNets
    assert services.controlnets.cache.cached_count() == 0
