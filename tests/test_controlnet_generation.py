"""ControlNet units through the one request/queue/generate path, in process with tiny models: a unit changes the
image, weight 0 leaves it pixel-exact, two units at once, start/end honoured, control modes, detected maps and
the per-unit infotext in sd-webui-controlnet's format."""
from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from backend.core.controlnet_units import parse_unit_infotext
from backend.core.infotext import parse_infotext
from backend.core.requests import Img2ImgRequest, Txt2ImgRequest
from tests.conftest import FAST
from tools.tiny_controlnets import write_tiny_controlnet


@pytest.fixture(scope="module")
def controlnet_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("controlnets")
    return {"canny": write_tiny_controlnet(root / "control_sd15_canny.pth", "sd1", seed=1, strength=0.3),
            "scribble": write_tiny_controlnet(root / "control_sd15_scribble.safetensors", "sd1", seed=2,
                                              strength=0.3),
            "xl": write_tiny_controlnet(root / "controlnet_xl_canny.safetensors", "sdxl", seed=1, strength=0.3)}


@pytest.fixture
def services(make_services, models_dir, controlnet_files):
    folder = models_dir / "ControlNet"
    folder.mkdir()
    for path in controlnet_files.values():
        shutil.copy(path, folder / path.name)
    return make_services()


def circle_png(size=64) -> bytes:
    image = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(image).ellipse((12, 12, size - 12, size - 12), fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def unit(**fields) -> dict:
    return {"module": "canny", "model": "control_sd15_canny", "image": circle_png(), "processor_res": 64,
            **fields}


def generate(services, request_class=Txt2ImgRequest, **fields):
    request = services.build_request(request_class, {**FAST, "seed": 5, "save_images": False, **fields})
    job = services.jobs.run_and_wait(request, timeout=300)
    assert job.status == "done", job.error
    return job.result


def pixels(result, index=0) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(result.images[index].png)).convert("RGB"), dtype=np.int16)


def test_a_unit_changes_the_image_and_weight_0_leaves_it_exact(services):
    plain = pixels(generate(services, prompt="a cat"))
    controlled = generate(services, prompt="a cat", controlnet_units=[unit()])
    assert np.abs(pixels(controlled) - plain).mean() > 1
    weightless = generate(services, prompt="a cat", controlnet_units=[unit(weight=0)])
    assert np.array_equal(pixels(weightless), plain)


def test_infotext_and_detected_map_follow_the_extension(services):
    result = generate(services, prompt="a cat", controlnet_units=[unit(slot=1, threshold_a=50)])
    parameters = parse_infotext(result.images[0].infotext)
    assert "ControlNet 1" in parameters and "ControlNet 0" not in parameters
    text = parameters["ControlNet 1"]
    title = services.controlnets.folder.find("control_sd15_canny").title
    assert text == (f"Module: canny, Model: {title}, Weight: 1.0, Resize Mode: Crop and Resize, Processor Res: 64, "
                    "Threshold A: 50.0, Threshold B: 200.0, Guidance Start: 0.0, Guidance End: 1.0, "
                    "Pixel Perfect: False, Control Mode: Balanced")
    assert parse_unit_infotext(text)["threshold_a"] == 50.0 and parse_unit_infotext(text)["model"] == title
    assert len(result.detected_maps) == 1
    detected = np.asarray(Image.open(io.BytesIO(result.detected_maps[0])).convert("L"))
    assert detected.shape == (64, 64) and detected[32, 32] == 0 and detected.max() == 255  # the circle's edge
    hidden = generate(services, prompt="a cat", controlnet_units=[unit(save_detected_map=False)])
    assert hidden.detected_maps == []


def test_two_units_at_once_differ_from_each_alone(services):
    first, second = unit(), unit(module="scribble_xdog", model="control_sd15_scribble")
    alone_1 = pixels(generate(services, prompt="a cat", controlnet_units=[first]))
    alone_2 = pixels(generate(services, prompt="a cat", controlnet_units=[second]))
    both = generate(services, prompt="a cat", controlnet_units=[first, second])
    assert np.abs(pixels(both) - alone_1).mean() > 0.5 and np.abs(pixels(both) - alone_2).mean() > 0.5
    assert set(parse_infotext(both.images[0].infotext)) >= {"ControlNet 0", "ControlNet 1"}
    assert len(both.detected_maps) == 2


def test_start_and_end_are_honoured(services):
    whole = pixels(generate(services, prompt="a cat", controlnet_units=[unit()]))
    early = pixels(generate(services, prompt="a cat", controlnet_units=[unit(guidance_end=0.5)]))  # step 1 of 3
    late = pixels(generate(services, prompt="a cat", controlnet_units=[unit(guidance_start=0.5)]))  # step 3 of 3
    plain = pixels(generate(services, prompt="a cat"))
    never = pixels(generate(services, prompt="a cat", controlnet_units=[unit(guidance_start=1.0)]))
    assert np.abs(early - whole).mean() > 0.5 and np.abs(early - plain).mean() > 0.5
    assert (late != plain).any() and np.abs(late - whole).mean() > 0.5
    assert np.array_equal(never, plain)  # no step is controlled: the image without the unit


def test_control_modes_change_the_image(services):
    images = {mode: pixels(generate(services, prompt="a cat", controlnet_units=[unit(control_mode=mode)]))
              for mode in (0, 1, 2)}
    assert np.abs(images[0] - images[1]).mean() > 0.5 and np.abs(images[1] - images[2]).mean() > 0.5


def test_img2img_uses_the_input_image_when_the_unit_has_none(services):
    result = generate(services, Img2ImgRequest, prompt="a cat", init_image=circle_png(), denoising_strength=0.6,
                      controlnet_units=[unit(image=None)])
    detected = np.asarray(Image.open(io.BytesIO(result.detected_maps[0])).convert("L"))
    assert detected[32, 32] == 0 and detected.max() == 255


def test_wrong_family_and_unknown_names_fail_the_job_with_the_field(services):
    request = services.build_request(Txt2ImgRequest, {**FAST, "controlnet_units": [unit(model="controlnet_xl_canny")]})
    job = services.jobs.run_and_wait(request, timeout=300)
    assert job.status == "failed" and "controlnet_units.0.model" in job.error and "SDXL ControlNet" in job.error
    request = services.build_request(Txt2ImgRequest, {**FAST, "controlnet_units": [unit(module="depth_midas")]})
    job = services.jobs.run_and_wait(request, timeout=300)
    assert job.status == "failed" and "dpt_hybrid-midas-501f0c75.pt" in job.error


def test_an_sdxl_controlnet_steers_an_sdxl_checkpoint(services, models_dir, checkpoint_files):
    os.link(checkpoint_files["sdxl"], models_dir / "Stable-diffusion" / checkpoint_files["sdxl"].name)
    services.models.refresh()
    xl = {"checkpoint": checkpoint_files["sdxl"].name, "prompt": "a cat"}
    plain = pixels(generate(services, **xl))
    steered = generate(services, **xl, controlnet_units=[unit(model="controlnet_xl_canny", control_mode=1)])
    assert np.abs(pixels(steered) - plain).mean() > 1
    assert "Control Mode: My prompt is more important" in steered.images[0].infotext


def test_hires_fix_applies_units_by_hr_option(services):
    hires = {"prompt": "a cat", "enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent", "denoising_strength": 0.9,
             "hr_second_pass_steps": 3}
    plain = pixels(generate(services, **hires))
    results = {option: generate(services, **hires, controlnet_units=[unit(hr_option=option)])
               for option in ("Both", "Low res only", "High res only")}
    images = {option: pixels(result) for option, result in results.items()}
    assert plain.shape == (128, 128, 3) and all(image.shape == plain.shape for image in images.values())
    for option, image in images.items():
        assert np.abs(image - plain).mean() > 0.5, option
    assert np.abs(images["Low res only"] - images["High res only"]).mean() > 0.5
    sizes = [Image.open(io.BytesIO(png)).size for png in results["Both"].detected_maps]
    assert sizes == [(128, 128), (64, 64)]  # the hires pass's map, then the first pass's


def test_a_units_control_mode_stays_with_that_unit(services):
    """Two units of one model file, Balanced and ControlNet is more important: the hook that makes the second's
    mode acts on its own view of the shared weights, never on the cached model the first unit uses."""
    from backend.generation.controlnet_run import prepared_controls

    request = services.build_request(Txt2ImgRequest, {**FAST, "seed": 1, "controlnet_units": [
        unit(), unit(control_mode=2)]})
    with (services.models.lease(None) as (entry, model),
          prepared_controls(request, services.controlnets, model, entry.title) as controls):
        balanced, injected = (prepared.model for prepared in controls.units)
        assert not balanced._forward_hooks_with_kwargs and len(injected._forward_hooks_with_kwargs) == 1
        assert balanced is not injected
        assert balanced.conv_in.weight.data_ptr() == injected.conv_in.weight.data_ptr()  # nothing copied


def square_mask_png(size=64, box=(16, 16, 48, 48)) -> bytes:
    mask = Image.new("L", (size, size), 0)
    if box is not None:
        ImageDraw.Draw(mask).rectangle(box, fill=255)
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()


def noise_png(size=64) -> bytes:
    pixels_ = np.random.default_rng(3).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels_).save(buffer, format="PNG")
    return buffer.getvalue()


INPAINT = {"prompt": "a cat", "init_image": noise_png(), "mask": square_mask_png(), "mask_blur": 0,
           "denoising_strength": 0.8}


def test_units_steer_inpainting_and_keep_the_pixels_outside_the_mask(services):
    source = np.asarray(Image.open(io.BytesIO(INPAINT["init_image"])).convert("RGB"), dtype=np.int16)
    inside = np.zeros((64, 64), dtype=bool)
    inside[16:49, 16:49] = True
    plain = pixels(generate(services, Img2ImgRequest, **INPAINT))
    steered = generate(services, Img2ImgRequest, **INPAINT, controlnet_units=[unit()])
    image = pixels(steered)
    assert np.array_equal(image[~inside], source[~inside])  # composited back exactly where inpainting keeps them
    assert np.abs(image[inside] - plain[inside]).mean() > 1  # the unit changed the repainted square
    assert "ControlNet 0" in parse_infotext(steered.images[0].infotext)
    weightless = pixels(generate(services, Img2ImgRequest, **INPAINT, controlnet_units=[unit(weight=0)]))
    assert np.array_equal(weightless, plain)


def test_only_masked_inpainting_crops_the_units_map_with_the_image(services):
    from backend.generation.controlnet_run import prepared_controls

    only_masked = {**INPAINT, "inpaint_full_res": 1, "inpaint_full_res_padding": 0}
    source = np.asarray(Image.open(io.BytesIO(INPAINT["init_image"])).convert("RGB"), dtype=np.int16)
    plain = pixels(generate(services, Img2ImgRequest, **only_masked))
    image = pixels(generate(services, Img2ImgRequest, **only_masked, controlnet_units=[unit()]))
    outside = np.ones((64, 64), dtype=bool)
    outside[16:49, 16:49] = False
    assert np.array_equal(image[outside], source[outside]) and np.abs(image - plain).mean() > 0.2
    request = services.build_request(Img2ImgRequest, {**FAST, **only_masked, "controlnet_units": [unit()]})
    with (services.models.lease(None) as (entry, model),
          prepared_controls(request, services.controlnets, model, entry.title, crop=(16, 16, 48, 48)) as controls):
        control = controls.units[0].control
    whole = torch.from_numpy(controls.units[0].detected.astype(np.float32) / 255).permute(2, 0, 1)[None]
    expected = torch.nn.functional.interpolate(whole[:, :, 16:48, 16:48], size=(64, 64))
    assert control.shape == (1, 3, 64, 64) and torch.equal(control, expected)  # the square's map, at the job size


def test_inpaint_only_follows_the_img2img_mask_unless_the_unit_has_its_own(services):
    """The unit's map marks the repainted area with -1 (the extension's inpaint protocol): the img2img mask's
    square (inverted with "Inpaint not masked"), or the unit's own mask when it has one."""
    from backend.generation.controlnet_run import prepared_controls

    source = torch.from_numpy(np.array(Image.open(io.BytesIO(INPAINT["init_image"])).convert("RGB"))).float()
    inside = torch.zeros((64, 64), dtype=torch.bool)
    inside[16:49, 16:49] = True
    corner = torch.zeros((64, 64), dtype=torch.bool)
    corner[:21, :21] = True
    cases = [({}, {}, inside), ({}, {"inpainting_mask_invert": 1}, ~inside),
             ({"mask": square_mask_png(box=(0, 0, 20, 20))}, {}, corner)]
    for unit_fields, request_fields, repainted in cases:
        request = services.build_request(Img2ImgRequest, {**FAST, **INPAINT, **request_fields, "controlnet_units": [
            unit(module="inpaint_only", image=None, **unit_fields)]})
        with (services.models.lease(None) as (entry, model),
              prepared_controls(request, services.controlnets, model, entry.title, request.init_image) as controls):
            control = controls.units[0].control[0].permute(1, 2, 0)
        assert (control[repainted] == -1).all(), unit_fields
        assert torch.allclose(control[~repainted] * 255, source[~repainted], atol=0.01), unit_fields


def test_units_steer_only_the_base_models_steps_before_the_refiner(services):
    refined = {"prompt": "a cat", "steps": 4, "refiner_checkpoint": "tiny-sd1-other.safetensors",
               "refiner_switch_at": 0.5}
    plain = pixels(generate(services, **refined))
    whole = generate(services, **refined, controlnet_units=[unit()])
    base_steps_only = pixels(generate(services, **refined, controlnet_units=[unit(guidance_end=0.5)]))
    refiner_steps_only = pixels(generate(services, **refined, controlnet_units=[unit(guidance_start=0.5)]))
    assert np.abs(pixels(whole) - plain).mean() > 1
    assert np.array_equal(pixels(whole), base_steps_only)  # steps 3 and 4 (the refiner's) are not steered
    assert np.array_equal(refiner_steps_only, plain)
    assert {"ControlNet 0", "Refiner"} <= set(parse_infotext(whole.images[0].infotext))
