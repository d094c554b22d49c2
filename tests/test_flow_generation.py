"""Flux.1 and SD3.5 generate through the one generate path: the same pixels plain diffusers gives for a plain prompt,
flow samplers under A1111 names, Forge's Distilled CFG Scale and Shift (infotext written and read back), Flux's
CFG 1 default with its notice about the negative prompt, img2img, previews of packed latents, and the REST API."""
from __future__ import annotations

import base64
import io
import os

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from backend.core.infotext import parse_infotext, request_fields
from backend.core.requests import Img2ImgRequest, Txt2ImgRequest
from backend.generation.flow_guidance import preview_latent
from tests.server_process import ServerProcess

FLOW_FAST = dict(steps=3, width=64, height=64, seed=11, sampler_name="Euler")


@pytest.fixture
def flow_services(make_services, tmp_path, flow_files):
    models = tmp_path / "flow-models"
    (models / "Stable-diffusion").mkdir(parents=True)
    os.link(flow_files["flux_comfy"], models / "Stable-diffusion" / "flux-tiny.safetensors")
    os.link(flow_files["sd3"], models / "Stable-diffusion" / "sd3-tiny.safetensors")
    (models / "text_encoder").symlink_to(flow_files["text_encoder"])
    return make_services(models_dir=models)


def run(services, request_class=Txt2ImgRequest, **fields):
    job = services.jobs.run_and_wait(request_class(**{**FLOW_FAST, **fields}), timeout=300)
    assert job.status == "done", job.error
    return job.result


def plain_diffusers(folder, family: str, prompt: str, **call) -> np.ndarray:
    from diffusers import DiffusionPipeline

    pipeline = DiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    image = pipeline(prompt, num_inference_steps=3, width=64, height=64,
                     generator=torch.Generator().manual_seed(FLOW_FAST["seed"]), **call).images[0]
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def png_pixels(result) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(result.images[0].png)).convert("RGB"), dtype=np.int16)


def test_flux_txt2img_gives_plain_diffusers_pixels(flow_services, flow_files):
    """CFG unset: Flux's 1 (no negative pass); Distilled CFG Scale 3.5 feeds the guidance embedding."""
    result = run(flow_services, checkpoint="flux-tiny", prompt="a red cat")
    expected = plain_diffusers(flow_files["flux_folder"], "flux", "a red cat", guidance_scale=3.5)
    assert np.abs(png_pixels(result) - expected).max() <= 1
    parameters = parse_infotext(result.images[0].infotext)
    assert parameters["CFG scale"] == "1" and parameters["Distilled CFG Scale"] == "3.5"
    assert result.model_label == "Flux.1"


def test_sd3_txt2img_gives_plain_diffusers_pixels(flow_services, flow_files):
    result = run(flow_services, checkpoint="sd3-tiny", prompt="a red cat", negative_prompt="blurry", cfg_scale=5.0)
    expected = plain_diffusers(flow_files["sd3_folder"], "sd3", "a red cat", negative_prompt="blurry",
                               guidance_scale=5.0)
    assert np.abs(png_pixels(result) - expected).max() <= 1


def test_prompt_syntax_on_clip_plain_words_on_t5(flow_services):
    """A weight changes the SD3 image (CLIP reads it); Flux reads T5's sequence, so its image changes only
    through the pooled CLIP vector, and a scheduled prompt runs."""
    plain = png_pixels(run(flow_services, checkpoint="sd3-tiny", prompt="a red cat"))
    weighted = png_pixels(run(flow_services, checkpoint="sd3-tiny", prompt="a (red:1.6) cat"))
    assert np.abs(plain - weighted).max() > 0
    run(flow_services, checkpoint="flux-tiny", prompt="a [dog:house:2] | BREAK cat")


def test_distilled_cfg_shift_and_cfg_change_the_image_and_read_back(flow_services):
    base = run(flow_services, checkpoint="flux-tiny", prompt="a cat")
    distilled = run(flow_services, checkpoint="flux-tiny", prompt="a cat", distilled_cfg_scale=8.0, shift=2.0)
    guided = run(flow_services, checkpoint="flux-tiny", prompt="a cat", cfg_scale=3.0, negative_prompt="dog")
    assert np.abs(png_pixels(base) - png_pixels(distilled)).max() > 0
    assert np.abs(png_pixels(base) - png_pixels(guided)).max() > 0
    fields = request_fields(parse_infotext(distilled.images[0].infotext))
    assert fields["distilled_cfg_scale"] == 8.0 and fields["shift"] == 2.0
    assert Txt2ImgRequest(**{k: v for k, v in fields.items() if k not in ("model_hash", "model_name")})
    assert not guided.warnings


def test_flux_negative_prompt_at_cfg_1_is_said(flow_services):
    result = run(flow_services, checkpoint="flux-tiny", prompt="a cat", negative_prompt="blurry")
    assert any("negative prompt ignored" in warning for warning in result.warnings)


@pytest.mark.parametrize("sampler", ["DPM++ 2M", "UniPC"])
def test_flow_samplers_run_and_differ(flow_services, sampler):
    euler = png_pixels(run(flow_services, checkpoint="sd3-tiny", prompt="a cat"))
    other = run(flow_services, checkpoint="sd3-tiny", prompt="a cat", sampler_name=sampler)
    assert parse_infotext(other.images[0].infotext)["Sampler"] == sampler
    assert np.abs(png_pixels(other) - euler).max() > 0


def test_sampler_without_flow_version_is_the_users_error(flow_services):
    job = flow_services.jobs.run_and_wait(Txt2ImgRequest(**{**FLOW_FAST, "sampler_name": "DDIM",
                                                            "checkpoint": "flux-tiny"}), timeout=300)
    assert job.status == "failed" and job.error_status == 422
    assert "DDIM" in job.error and "Euler" in job.error


@pytest.mark.parametrize("checkpoint", ["flux-tiny", "sd3-tiny"])
def test_img2img_starts_from_the_image_below_full_strength(flow_services, checkpoint):
    """(A random tiny VAE cannot reconstruct an image, so what is checked is whether the input matters.)"""
    def png(colour) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), colour).save(buffer, format="PNG")
        return buffer.getvalue()

    def output(colour, strength: float) -> np.ndarray:
        return png_pixels(run(flow_services, Img2ImgRequest, checkpoint=checkpoint, prompt="a cat", steps=10,
                              init_image=png(colour), denoising_strength=strength))

    assert np.abs(output("red", 0.5) - output("blue", 0.5)).max() > 10
    assert np.abs(output("red", 1.0) - output("blue", 1.0)).max() <= 1  # full strength: noise only


def test_flux_preview_unpacks_latents():
    from diffusers import FluxPipeline

    latents = torch.randn(1, 16, 6, 10)
    packed = FluxPipeline._pack_latents(latents, 1, 16, 6, 10)
    assert torch.equal(preview_latent(packed, width=80, height=48), latents[0])
    assert preview_latent(latents, 80, 48) is not None


def test_live_preview_of_a_flux_job(make_services, tmp_path, flow_files):
    models = tmp_path / "preview-models"
    (models / "Stable-diffusion").mkdir(parents=True)
    os.link(flow_files["flux_comfy"], models / "Stable-diffusion" / "flux-tiny.safetensors")
    (models / "text_encoder").symlink_to(flow_files["text_encoder"])
    services = make_services(models_dir=models, preview_every=1)
    job = services.jobs.run_and_wait(Txt2ImgRequest(**{**FLOW_FAST, "prompt": "a cat"}), timeout=300)
    assert job.status == "done", job.error
    assert job.progress.preview.size in ((8, 8), (64, 64))  # the latent unpacked (a small VAE decodes it whole)


@pytest.fixture(scope="module")
def flow_server(tmp_path_factory, flow_files):
    root = tmp_path_factory.mktemp("flow-api")
    models = root / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    os.link(flow_files["flux_comfy"], models / "Stable-diffusion" / "flux-tiny.safetensors")
    (models / "text_encoder").symlink_to(flow_files["text_encoder"])
    process = ServerProcess(root, models, "--api", "--ckpt", "flux-tiny.safetensors").start()
    yield process
    process.stop()


def test_rest_txt2img_with_flux(flow_server):
    body = {"prompt": "a red cat", "steps": 3, "width": 64, "height": 64, "seed": 11, "sampler_name": "Euler",
            "distilled_cfg_scale": 5.0}
    with httpx.Client(base_url=flow_server.url + "/sdapi/v1", timeout=300) as client:
        answer = client.post("/txt2img", json=body)
        assert answer.status_code == 200, answer.text
        info = answer.json()["info"]
        image = Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0])))
        assert image.size == (64, 64)
        assert '"Distilled CFG Scale": "5.0"' in info or "Distilled CFG Scale: 5" in info
        assert "CFG scale: 1," in info
        refused = client.post("/txt2img", json={**body, "sampler_name": "DDIM"})
        assert refused.status_code in (400, 422) and "DDIM" in refused.text


def test_hires_fix_with_an_image_upscaler(flow_services):
    result = run(flow_services, checkpoint="flux-tiny", prompt="a cat", enable_hr=True, hr_scale=2.0,
                 hr_upscaler="Lanczos", denoising_strength=0.5)
    assert Image.open(io.BytesIO(result.images[0].png)).size == (128, 128)


def test_latent_hires_fix_on_flux_upscales_unpacked_latents(flow_services, flow_files):
    """At strength 0 the result is the first pass's latents, unpacked, upscaled (bilinear) and decoded: the same
    pixels computed here from plain diffusers' latents."""
    from diffusers import FluxPipeline

    result = run(flow_services, checkpoint="flux-tiny", prompt="a red cat", enable_hr=True, hr_scale=2.0,
                 hr_upscaler="Latent", denoising_strength=0.0)
    pipeline = FluxPipeline.from_pretrained(str(flow_files["flux_folder"]))
    pipeline.set_progress_bar_config(disable=True)
    packed = pipeline("a red cat", num_inference_steps=3, width=64, height=64, guidance_scale=3.5, output_type="latent",
                      generator=torch.Generator().manual_seed(FLOW_FAST["seed"])).images
    latents = torch.nn.functional.interpolate(pipeline._unpack_latents(packed, 64, 64, 8), size=(16, 16),
                                              mode="bilinear")
    vae = pipeline.vae
    with torch.no_grad():
        pixels = vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor).sample
    expected = np.asarray(pipeline.image_processor.postprocess(pixels, output_type="pil")[0], dtype=np.int16)
    assert np.abs(png_pixels(result) - expected).max() <= 1
    assert "Hires upscaler: Latent" in result.images[0].infotext


@pytest.mark.parametrize("checkpoint", ["flux-tiny", "sd3-tiny"])
def test_latent_hires_fix_second_pass_on_flow_models(flow_services, checkpoint):
    result = run(flow_services, checkpoint=checkpoint, prompt="a cat", enable_hr=True, hr_scale=2.0,
                 hr_upscaler="Latent (bicubic antialiased)", denoising_strength=0.6, cfg_scale=3.0)
    assert Image.open(io.BytesIO(result.images[0].png)).size == (128, 128)
    job = flow_services.jobs.run_and_wait(Txt2ImgRequest(**{**FLOW_FAST, "checkpoint": "flux-tiny", "enable_hr": True,
                                                            "hr_upscaler": "Latent", "hr_resize_x": 72,
                                                            "hr_resize_y": 64}), timeout=300)
    assert job.status == "failed" and job.error_field == "hr_scale" and "16" in job.error


def test_the_page_defaults_to_cfg_1_and_counts_t5_tokens_for_flux(flow_server):
    """In the browser, on the server above: the CFG sliders follow the loaded Flux model (1, as the API's default),
    Distilled CFG Scale shows, and the prompt counter adds T5's count and limit."""
    import shutil

    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(flow_server.url + "/")
            page.wait_for_function("() => document.querySelector('#txt2img_cfg_scale input[type=number]')"
                                   "?.value === '1'", timeout=60_000)
            assert page.locator("#distilled_cfg_scale").is_visible()
            page.fill("#txt2img_prompt textarea", "a red cat")
            page.wait_for_function("() => /T5 \\d+\\/511/.test(document.querySelector('#txt2img_token_counter')"
                                   ".innerText)", timeout=30_000)
            page.get_by_role("tab", name="img2img").click()  # rendered when first shown, with the value it got
            page.wait_for_function("() => document.querySelector('#img2img_cfg_scale input[type=number]')"
                                   "?.value === '1'", timeout=30_000)
        finally:
            browser.close()
