"""Inpainting and outpainting on Flux.1 and SD3.5: inside the mask the pixels plain diffusers' inpaint pipelines give,
outside it the input, A1111's masked content and inpaint area options; a Flux Fill checkpoint detected from its
weights, refused outside inpainting, inpainting as FluxFillPipeline does."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from backend.core.requests import Img2ImgRequest, Txt2ImgRequest

INPAINT = dict(steps=2, width=64, height=64, seed=5, sampler_name="Euler", prompt="a red cat", mask_blur=0,
               denoising_strength=0.75)
BOX = (16, 16, 48, 40)  # the mask's white (repainted) area


def picture() -> Image.Image:
    ramp = np.linspace(0, 255, 64, dtype=np.uint8)
    return Image.fromarray(np.stack([np.tile(ramp, (64, 1)), np.tile(ramp[:, None], (1, 64)),
                                     np.full((64, 64), 90, np.uint8)], axis=-1))


def box_mask() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, BOX)
    return mask


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def inside(array: np.ndarray) -> np.ndarray:
    left, top, right, bottom = BOX
    return array[top:bottom, left:right]


@pytest.fixture(scope="module")
def fill_file(tmp_path_factory):
    from tools.tiny_flow_models import write_flux_comfy

    return write_flux_comfy(tmp_path_factory.mktemp("fill") / "flux1-fill-tiny.safetensors", seed=3, variant="fill")


@pytest.fixture
def inpaint_services(make_services, tmp_path, flow_files, fill_file):
    models = tmp_path / "inpaint-models"
    (models / "Stable-diffusion").mkdir(parents=True)
    os.link(flow_files["flux_comfy"], models / "Stable-diffusion" / "flux-tiny.safetensors")
    os.link(flow_files["sd3"], models / "Stable-diffusion" / "sd3-tiny.safetensors")
    os.link(fill_file, models / "Stable-diffusion" / "flux-fill-tiny.safetensors")
    (models / "text_encoder").symlink_to(flow_files["text_encoder"])
    return make_services(models_dir=models)


def inpaint(services, **fields):
    request = Img2ImgRequest(**{**INPAINT, "init_image": png(picture()), "mask": png(box_mask()), **fields})
    job = services.jobs.run_and_wait(request, timeout=300)
    assert job.status == "done", job.error
    return job.result


def result_pixels(result) -> np.ndarray:
    return pixels(Image.open(io.BytesIO(result.images[0].png)))


def diffusers_inpaint(pipeline, **call) -> np.ndarray:
    pipeline.set_progress_bar_config(disable=True)
    image = pipeline("a red cat", image=picture(), mask_image=box_mask(), width=64, height=64, num_inference_steps=2,
                     generator=torch.Generator().manual_seed(INPAINT["seed"]), **call).images[0]
    return pixels(image)


@pytest.mark.parametrize("checkpoint, folder, cls, call", [
    ("flux-tiny", "flux_folder", "FluxInpaintPipeline", {"guidance_scale": 3.5}),
    ("sd3-tiny", "sd3_folder", "StableDiffusion3InpaintPipeline", {"guidance_scale": 5.0, "negative_prompt": ""}),
])
def test_inpaint_gives_diffusers_pixels_inside_the_mask_and_the_input_outside(inpaint_services, flow_files,
                                                                               checkpoint, folder, cls, call):
    import diffusers

    result = inpaint(inpaint_services, checkpoint=checkpoint, cfg_scale=call["guidance_scale"] if
                     checkpoint == "sd3-tiny" else 1.0)
    ours = result_pixels(result)
    expected = diffusers_inpaint(getattr(diffusers, cls).from_pretrained(str(flow_files[folder])), strength=0.75,
                                 **call)
    assert np.abs(inside(ours) - inside(expected)).max() <= 1
    outside = np.ones((64, 64), bool)
    outside[BOX[1]:BOX[3], BOX[0]:BOX[2]] = False
    assert np.array_equal(ours[outside], pixels(picture())[outside])
    assert np.abs(inside(ours) - inside(pixels(picture()))).max() > 10
    assert "Mask blur: 0" in result.images[0].infotext


def test_flow_masked_content_and_only_masked(inpaint_services):
    half = dict(checkpoint="flux-tiny", steps=4, denoising_strength=0.5)  # starts half-way: the start latents count
    original = result_pixels(inpaint(inpaint_services, **half))
    noise = result_pixels(inpaint(inpaint_services, **half, inpainting_fill=2))
    nothing = inpaint(inpaint_services, **half, inpainting_fill=3)
    assert np.abs(inside(original) - inside(noise)).max() > 10
    assert np.abs(inside(noise) - inside(result_pixels(nothing))).max() > 10
    assert "Masked content: latent nothing" in nothing.images[0].infotext
    cropped = inpaint(inpaint_services, checkpoint="sd3-tiny", inpaint_full_res=True, inpaint_full_res_padding=4)
    assert "Inpaint area: Only masked" in cropped.images[0].infotext
    corner = result_pixels(cropped)[:8, :8]
    assert np.array_equal(corner, pixels(picture())[:8, :8])


def test_flux_fill_is_detected_and_only_inpaints(inpaint_services):
    job = inpaint_services.jobs.run_and_wait(Txt2ImgRequest(checkpoint="flux-fill-tiny", prompt="a cat", steps=1,
                                                            width=64, height=64), timeout=300)
    assert job.status == "failed" and job.error_field == "checkpoint" and "inpaint" in job.error
    assert job.error_status < 500


def test_flux_fill_inpaints_as_diffusers_and_outpaints(inpaint_services):
    from tools.tiny_flow_models import tiny_flow_pipeline

    result = inpaint(inpaint_services, checkpoint="flux-fill-tiny", denoising_strength=1.0)
    assert result.model_label == "Flux.1 inpainting"
    expected = diffusers_inpaint(tiny_flow_pipeline("flux", seed=3, variant="fill"), guidance_scale=3.5)
    difference = np.abs(inside(result_pixels(result)) - inside(expected))
    assert difference.max() <= 4 and difference.mean() < 1  # rounding: the 384-wide input amplifies it
    nothing = result_pixels(inpaint(inpaint_services, checkpoint="flux-fill-tiny", inpainting_fill=3, steps=4,
                                    denoising_strength=0.5))
    assert np.abs(inside(nothing) - inside(result_pixels(result))).max() > 0
    request = Img2ImgRequest(**{**INPAINT, "checkpoint": "flux-fill-tiny", "init_image": png(picture()),
                                "outpaint_right": 32, "denoising_strength": 1.0})
    job = inpaint_services.jobs.run_and_wait(request, timeout=300)
    assert job.status == "done", job.error
    wider = result_pixels(job.result)
    assert wider.shape[:2] == (64, 96)
    assert np.array_equal(wider[:, :32], pixels(picture())[:, :32])  # far from the new margin: the input
