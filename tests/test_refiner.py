"""A1111's refiner: the job's checkpoint samples the first part of the steps and another checkpoint continues the
same latents; switch at 1.0 is the base alone; both models leased for the job; infotext, REST and errors."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from backend.core.infotext import parse_infotext, request_fields
from backend.core.requests import RequestError, Txt2ImgRequest, build_request
from backend.http.routes import build_api_router
from backend.plugins.api import Registered
from tests.conftest import pixels, run_txt2img
from tools.tiny_models import write_tiny_checkpoint

JOB = dict(prompt="a red circle", seed=11, sampler_name="Euler", steps=6, checkpoint="tiny-sd1.safetensors")
OTHER = "tiny-sd1-other.safetensors"


def image(services, **fields):
    job = run_txt2img(services, **{**JOB, **fields})
    assert job.status == "done", job.error
    return pixels(job.result.images[0].path), job.result.images[0].infotext


def step_latents(services, **fields) -> tuple[list, np.ndarray, str]:
    """Each step's latents (as the extension hook sees them), the image and its infotext."""
    latents = []
    hook = Registered("test", lambda info: latents.append(info.latents.clone()))
    services.extensions.hooks.on_step.append(hook)
    try:
        pixels_, infotext = image(services, **fields)
    finally:
        services.extensions.hooks.on_step.remove(hook)
    return latents, pixels_, infotext


def test_switch_at_one_is_the_base_alone_and_the_refiner_continues_the_same_latents(services):
    import torch

    base_steps, base, _ = step_latents(services)
    at_end, info = image(services, refiner_checkpoint=OTHER, refiner_switch_at=1.0)
    assert np.array_equal(at_end, base) and "Refiner" not in info
    refined_steps, refined, refined_info = step_latents(services, refiner_checkpoint=OTHER, refiner_switch_at=0.5)
    # int(6 * 0.5) = 3 steps on the base: those latents are the base run's; the refiner's steps differ from there
    assert len(refined_steps) == len(base_steps) == 6
    assert all(torch.equal(a, b) for a, b in zip(refined_steps[:3], base_steps[:3]))
    assert all(not torch.allclose(a, b) for a, b in zip(refined_steps[3:], base_steps[3:]))
    refiner_alone_steps, refiner_alone, _ = step_latents(services, checkpoint=OTHER)
    assert not torch.allclose(refiner_alone_steps[0], refined_steps[0])  # the refiner did not start the run
    assert np.abs(refined - base).mean() > 0.5 and np.abs(refined - refiner_alone).mean() > 0.5
    parsed = parse_infotext(refined_info)
    other = services.models.resolve(OTHER)
    assert parsed["Refiner"] == f"{other.model_name} [{other.short_hash}]"
    assert parsed["Refiner switch at"] == "0.5"
    assert parsed["Model"] == services.models.resolve(JOB["checkpoint"]).model_name
    # the job's own pipeline got its UNet back: the base model alone is unchanged afterwards
    assert np.array_equal(image(services)[0], base)


def test_both_models_are_leased_while_the_job_runs(services):
    leased = []

    def watch(step_info):
        leased.append(sorted(c.entry.name for c in services.models._cache.values() if c.leases))

    hook = Registered("test", watch)
    services.extensions.hooks.on_step.append(hook)
    try:
        image(services, refiner_checkpoint=OTHER, refiner_switch_at=0.5)
    finally:
        services.extensions.hooks.on_step.remove(hook)
    assert leased and all(names == sorted([JOB["checkpoint"], OTHER]) for names in leased)
    assert not any(c.leases for c in services.models._cache.values())


def test_refiner_in_img2img(services):
    import io

    from PIL import Image

    from backend.core.requests import Img2ImgRequest

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 30)).save(buffer, format="PNG")
    fields = dict(prompt="p", steps=6, width=64, height=64, seed=2, sampler_name="Euler", init_image=buffer.getvalue(),
                  denoising_strength=0.8, checkpoint=JOB["checkpoint"])
    runs = {}
    for name, extra in (("base", {}), ("refined", {"refiner_checkpoint": OTHER, "refiner_switch_at": 0.5})):
        job = services.jobs.run_and_wait(Img2ImgRequest(**fields, **extra), timeout=300)
        assert job.status == "done", job.error
        runs[name] = (pixels(job.result.images[0].path), job.result.images[0].infotext)
    assert np.abs(runs["refined"][0] - runs["base"][0]).mean() > 0.2
    assert "Refiner switch at: 0.5" in runs["refined"][1]


def test_sdxl_base_refined_by_another_sdxl_checkpoint(make_services, checkpoint_files, tmp_path):
    folder = tmp_path / "xl" / "Stable-diffusion"
    folder.mkdir(parents=True)
    os.link(checkpoint_files["sdxl"], folder / "base.safetensors")
    write_tiny_checkpoint(folder / "second.safetensors", "sdxl", seed=9)
    os.link(checkpoint_files["sd1"], folder / "sd1.safetensors")
    services = make_services(models_dir=folder.parent)
    fields = dict(JOB, checkpoint="base.safetensors")
    base = pixels(run_txt2img(services, **fields).result.images[0].path)
    same = pixels(run_txt2img(services, **fields, refiner_checkpoint="second.safetensors",
                              refiner_switch_at=1.0).result.images[0].path)
    refined = run_txt2img(services, **fields, refiner_checkpoint="second.safetensors", refiner_switch_at=0.5)
    assert refined.status == "done", refined.error
    assert np.array_equal(same, base) and np.abs(pixels(refined.result.images[0].path) - base).mean() > 0.2
    wrong_space = run_txt2img(services, **fields, refiner_checkpoint="sd1.safetensors", refiner_switch_at=0.5)
    assert wrong_space.status == "failed" and "refiner_checkpoint" in wrong_space.error
    assert "cannot continue" in wrong_space.error


def test_errors_name_the_refiner_fields(services):
    missing = run_txt2img(services, **JOB, refiner_checkpoint="nope.safetensors", refiner_switch_at=0.5)
    assert missing.status == "failed" and missing.error.startswith("refiner_checkpoint")
    for fields, field in (({"refiner_switch_at": 0}, "refiner_switch_at"),
                          ({"refiner_checkpoint": OTHER, "enable_hr": True, "hires_fix_refiner_pass": "third pass"},
                           "hires_fix_refiner_pass")):
        with pytest.raises(RequestError) as error:
            build_request(Txt2ImgRequest, fields)
        assert error.value.field == field


def test_infotext_round_trip_and_rest(services):
    other = services.models.resolve(OTHER)
    text = f"p\nSteps: 6, Sampler: Euler, Seed: 1, Refiner: {other.model_name} [{other.short_hash}], " \
           "Refiner switch at: 0.6"
    fields = request_fields(parse_infotext(text))
    assert fields["refiner_checkpoint"] == f"{other.model_name} [{other.short_hash}]"
    assert fields["refiner_switch_at"] == 0.6
    app = FastAPI()
    app.include_router(build_api_router(services))
    body = {"prompt": "p", "steps": 4, "width": 64, "height": 64, "seed": 3, "sampler_name": "Euler",
            "refiner_checkpoint": other.title, "refiner_switch_at": 0.5}
    with TestClient(app) as client:
        response = client.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 200, response.text
        info = json.loads(response.json()["info"])
        assert "Refiner switch at: 0.5" in info["infotexts"][0]
        missing = client.post("/sdapi/v1/txt2img", json={**body, "refiner_checkpoint": "nope"})
        assert missing.status_code == 422 and missing.json()["detail"].startswith("refiner_checkpoint:")


def test_xyz_plot_refiner_axes():
    from extensions.xyz_plot import axes

    request = Txt2ImgRequest(steps=2, width=64, height=64, seed=1, extension_args={"xyz_plot": {
        "x_type": "Refiner switch at", "x_values": "0.5, 1", "y_type": "Refiner checkpoint", "y_values": OTHER}})
    cells = [cell.request for cell in axes.plan_plot(request, "xyz_plot").cells]
    assert [(cell.refiner_checkpoint, cell.refiner_switch_at) for cell in cells] == [(OTHER, 0.5), (OTHER, 1.0)]


def test_sdxl_base_then_the_sdxl_refiner(make_services, checkpoint_files, tmp_path):
    """A1111's main use: SDXL base -> SDXL refiner (OpenCLIP only, aesthetic-score time ids)."""
    import torch

    folder = tmp_path / "xl" / "Stable-diffusion"
    folder.mkdir(parents=True)
    os.link(checkpoint_files["sdxl"], folder / "base.safetensors")
    write_tiny_checkpoint(folder / "refiner.safetensors", "sdxl-refiner", seed=5)
    services = make_services(models_dir=folder.parent)
    fields = dict(JOB, checkpoint="base.safetensors")
    base_steps, base, _ = step_latents(services, **fields)
    refined_steps, refined, infotext = step_latents(services, **fields, refiner_checkpoint="refiner.safetensors",
                                                    refiner_switch_at=0.5)
    assert all(torch.equal(a, b) for a, b in zip(refined_steps[:3], base_steps[:3]))
    assert not torch.allclose(refined_steps[-1], base_steps[-1])
    assert np.abs(refined - base).mean() > 0.5
    assert parse_infotext(infotext)["Refiner"].startswith("refiner [")
    # with the hires fix, the SDXL refiner that took over the first pass makes the whole hires pass (its own
    # img2img pipeline: OpenCLIP-G only, aesthetic-score time ids)
    for refiner_pass in ("first pass", "second pass"):  # second pass: it switches in during the hires pass
        hires = run_txt2img(services, **dict(fields, steps=2), refiner_checkpoint="refiner.safetensors",
                            refiner_switch_at=0.5, enable_hr=True, hr_scale=1.5, hr_upscaler="Latent",
                            denoising_strength=1.0, hires_fix_refiner_pass=refiner_pass)
        assert hires.status == "done", hires.error
        assert pixels(hires.result.images[0].path).shape[:2] == (96, 96)
    # the refiner cannot start a txt2img job, and as the job's checkpoint it takes no refiner
    as_base = run_txt2img(services, **dict(fields, checkpoint="refiner.safetensors"),
                          refiner_checkpoint="base.safetensors", refiner_switch_at=0.5)
    assert as_base.status == "failed" and "refiner" in as_base.error.lower()


def unet_calls(services, **fields) -> tuple[dict[str, int], np.ndarray, str]:
    """How many times each checkpoint's UNet ran for one txt2img job, its image and infotext."""
    calls = {JOB["checkpoint"]: 0, OTHER: 0}
    handles = []
    for name in calls:
        with services.models.lease(services.models.resolve(name).title) as (_entry, model):
            handles.append(model.pipeline.unet.register_forward_hook(
                lambda *_args, name=name: calls.__setitem__(name, calls[name] + 1)))
    try:
        image_pixels, infotext = image(services, **fields)
    finally:
        for handle in handles:
            handle.remove()
    return calls, image_pixels, infotext


HIRES = dict(steps=4, enable_hr=True, hr_scale=1.5, hr_upscaler="Latent", denoising_strength=1.0,
             refiner_checkpoint=OTHER, refiner_switch_at=0.5)


def test_refiner_with_the_hires_fix_switches_in_the_pass_a1111_chooses(services):
    """A1111's "Hires fix: which pass to enable refiner for": 4 first-pass steps, 4 hires steps, switch at 0.5
    (2 steps on the base). Second pass (the default): the base makes the first pass and half the second. First
    pass: the refiner takes over the first pass and, still loaded, makes the whole hires pass."""
    calls, second_pass, info = unet_calls(services, **HIRES)
    assert calls == {JOB["checkpoint"]: 4 + 2, OTHER: 2}
    assert "Refiner switch at: 0.5" in info and "Hires refiner" not in info
    calls, first_pass, info = unet_calls(services, **HIRES, hires_fix_refiner_pass="first pass")
    assert calls == {JOB["checkpoint"]: 2, OTHER: 2 + 4}
    assert parse_infotext(info)["Hires refiner"] == "first pass"
    assert request_fields(parse_infotext(info))["hires_fix_refiner_pass"] == "first pass"
    calls, both, _ = unet_calls(services, **HIRES, hires_fix_refiner_pass="both passes")
    assert calls == {JOB["checkpoint"]: 2, OTHER: 2 + 4}
    assert np.array_equal(both, first_pass)  # the refiner, already in, has nothing to switch in the second pass
    plain, _ = image(services, **{**HIRES, "refiner_checkpoint": None})
    assert np.abs(second_pass - plain).mean() > 0.2 and np.abs(first_pass - second_pass).mean() > 0.2
    # a hires checkpoint runs the second pass; the refiner then switches in during it again
    calls, _, _ = unet_calls(services, **HIRES, hires_fix_refiner_pass="both passes",
                             hr_checkpoint_name=JOB["checkpoint"])
    assert calls == {JOB["checkpoint"]: 2 + 2, OTHER: 2 + 2}


def test_hires_refiner_pass_over_rest(services):
    app = FastAPI()
    app.include_router(build_api_router(services))
    body = {"prompt": "p", "steps": 2, "width": 64, "height": 64, "seed": 3, "sampler_name": "Euler",
            "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "denoising_strength": 0.5,
            "refiner_checkpoint": OTHER, "refiner_switch_at": 0.5,
            "override_settings": {"hires_fix_refiner_pass": "both passes"}}
    with TestClient(app) as client:
        response = client.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 200, response.text
        assert "Hires refiner: both passes" in json.loads(response.json()["info"])["infotexts"][0]
        wrong = client.post("/sdapi/v1/txt2img", json={**body, "override_settings": {"hires_fix_refiner_pass": "x"}})
        assert wrong.status_code == 422 and "hires_fix_refiner_pass" in wrong.json()["detail"]
        # without an override, the saved option (A1111's Settings) decides
        assert client.post("/sdapi/v1/options", json={"hires_fix_refiner_pass": "first pass"}).status_code == 200
        saved = client.post("/sdapi/v1/txt2img", json={**body, "override_settings": {}})
        assert "Hires refiner: first pass" in json.loads(saved.json()["info"])["infotexts"][0]
