"""A table of bad inputs, sent to the REST API and to the web UI's event handlers (over Gradio's protocol, as a
page or a hostile client sends them): each gets a clear 4xx / error message that names what is wrong, never a
5xx, and the server generates normally afterwards (issue 9)."""
from __future__ import annotations

import base64
import io
import json
import os
import struct
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

import app
from backend.core.requests import ExtrasRequest
from tests.server_process import free_port
from tests.ui_protocol import UiSession, file_data

SMALL = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64, "cfg_scale": 5}


def png_bytes(size=(64, 64), colour=(30, 120, 200), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width=100_000, height=100_000) -> bytes:
    """A few hundred bytes that claim 10 billion pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + png_chunk(b"IEND", b""))


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><script>alert(1)</script></svg>'
HTML = b"<!doctype html><html><body><script>alert(1)</script></body></html>"
TRUNCATED = png_bytes((256, 256), (10, 200, 90))[:300]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def nan_json(body: dict) -> str:
    return json.dumps(body)  # Python writes NaN / Infinity literals, as some clients do


REST_CASES = [
    # (name, path, body (dict, or raw text), status, words the detail must contain)
    ("width zero", "txt2img", {**SMALL, "width": 0}, 422, ["width"]),
    ("width huge", "txt2img", {**SMALL, "width": 100_000}, 422, ["width"]),
    ("width not a multiple of 8", "txt2img", {**SMALL, "width": 65}, 422, ["width", "multiple of 8"]),
    ("height negative", "txt2img", {**SMALL, "height": -64}, 422, ["height"]),
    ("steps zero", "txt2img", {**SMALL, "steps": 0}, 422, ["steps"]),
    ("steps huge", "txt2img", {**SMALL, "steps": 100_000}, 422, ["steps"]),
    ("cfg NaN", "txt2img", nan_json({**SMALL, "cfg_scale": float("nan")}), 422, ["cfg_scale", "finite"]),
    ("cfg infinity", "txt2img", nan_json({**SMALL, "cfg_scale": float("inf")}), 422, ["cfg_scale"]),
    ("cfg negative", "txt2img", {**SMALL, "cfg_scale": -3}, 422, ["cfg_scale"]),
    ("huge batch size", "txt2img", {**SMALL, "batch_size": 100_000}, 422, ["batch_size"]),
    ("huge batch count", "txt2img", {**SMALL, "n_iter": 1_000_000}, 422, ["n_iter"]),
    ("seed not a number", "txt2img", {**SMALL, "seed": "abc"}, 422, ["seed"]),
    ("prompt not text", "txt2img", {**SMALL, "prompt": {"a": 1}}, 422, ["prompt"]),
    ("overlong prompt", "txt2img", {**SMALL, "prompt": "red " * 50_000}, 422, ["prompt", "20000"]),
    ("overlong negative prompt", "txt2img", {**SMALL, "negative_prompt": "x" * 20_001}, 422, ["negative_prompt"]),
    ("unknown sampler", "txt2img", {**SMALL, "sampler_name": "Warp drive"}, 422, ["sampler"]),
    ("unknown schedule", "txt2img", {**SMALL, "scheduler": "Sometimes"}, 422, ["schedule"]),
    ("unknown checkpoint", "txt2img", {**SMALL, "override_settings": {"sd_model_checkpoint": "nope"}}, 422,
     ["sd_model_checkpoint"]),
    ("path-like checkpoint", "txt2img", {**SMALL, "override_settings": {"sd_model_checkpoint": "../../etc/passwd"}},
     422, ["sd_model_checkpoint"]),
    ("unknown VAE", "txt2img", {**SMALL, "override_settings": {"sd_vae": "../../vae.pt"}}, 422, ["sd_vae"]),
    ("clip skip out of range", "txt2img", {**SMALL, "override_settings": {"CLIP_stop_at_last_layers": 13}}, 422,
     ["clip_skip"]),
    ("setting out of range", "txt2img", {**SMALL, "override_settings": {"jpeg_quality": 0}}, 422,
     ["override_settings", "jpeg_quality"]),
    ("unknown script", "txt2img", {**SMALL, "alwayson_scripts": {"no such thing": {"args": []}}}, 422,
     ["alwayson_scripts"]),
    ("hires scale NaN", "txt2img", nan_json({**SMALL, "enable_hr": True, "hr_scale": float("nan")}), 422,
     ["hr_scale"]),
    ("body not JSON", "txt2img", "prompt=a cat", 422, []),
    ("body a list", "txt2img", [1, 2, 3], 422, []),
    ("init image malformed base64", "img2img", {**SMALL, "init_images": ["%%%not base64"]}, 422,
     ["init_images[0]", "base64"]),
    ("init image not an image", "img2img", {**SMALL, "init_images": [b64(b"hello world")]}, 422, ["init_images[0]"]),
    ("init image SVG", "img2img", {**SMALL, "init_images": [b64(SVG)]}, 422, ["init_images[0]", "SVG"]),
    ("init image HTML", "img2img", {**SMALL, "init_images": [b64(HTML)]}, 422, ["init_images[0]"]),
    ("init image decompression bomb", "img2img", {**SMALL, "init_images": [b64(bomb_png())]}, 422,
     ["init_images[0]", "too large"]),
    ("init image truncated", "img2img", {**SMALL, "init_images": [b64(TRUNCATED)]}, 422, ["init_images[0]"]),
    ("no init image", "img2img", {**SMALL, "init_images": []}, 422, ["init_images"]),
    ("strength NaN", "img2img", nan_json({**SMALL, "init_images": [b64(png_bytes())],
                                          "denoising_strength": float("nan")}), 422, ["denoising_strength"]),
    ("strength above 1", "img2img", {**SMALL, "init_images": [b64(png_bytes())], "denoising_strength": 1.5}, 422,
     ["denoising_strength"]),
    ("mask not an image", "img2img", {**SMALL, "init_images": [b64(png_bytes())], "mask": b64(HTML)}, 422,
     ["mask"]),
    ("empty mask", "img2img", {**SMALL, "init_images": [b64(png_bytes())],
                               "mask": b64(png_bytes(colour=(0, 0, 0)))}, 422, ["mask", "empty"]),
    ("mask blur negative", "img2img", {**SMALL, "init_images": [b64(png_bytes())], "mask_blur": -4}, 422,
     ["mask_blur"]),
    ("inpainting fill out of range", "img2img", {**SMALL, "init_images": [b64(png_bytes())], "inpainting_fill": 7},
     422, ["inpainting_fill"]),
    ("resize mode out of range", "img2img", {**SMALL, "init_images": [b64(png_bytes())], "resize_mode": 9}, 422,
     ["resize_mode"]),
    ("unknown upscaler", "extra-single-image", {"image": b64(png_bytes()), "upscaler_1": "../../ESRGAN/x.pth"},
     422, ["upscaler_1"]),
    ("upscale factor huge", "extra-single-image", {"image": b64(png_bytes()), "upscaling_resize": 1000}, 422,
     ["upscaling_resize"]),
    ("upscale factor NaN", "extra-single-image", nan_json({"image": b64(png_bytes()),
                                                           "upscaling_resize": float("nan")}), 422,
     ["upscaling_resize"]),
    ("upscale image SVG", "extra-single-image", {"image": b64(SVG)}, 422, ["image"]),
    ("batch upscale with a bomb", "extra-batch-images", {"imageList": [{"data": b64(png_bytes()), "name": "a"},
                                                                       {"data": b64(bomb_png()), "name": "b"}]},
     422, ["too large"]),
    ("png info of HTML", "png-info", {"image": b64(HTML)}, 422, ["image"]),
    ("options: path as checkpoint", "options", {"sd_model_checkpoint": "/etc/passwd"}, 422,
     ["sd_model_checkpoint"]),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoint_files):
    root = tmp_path_factory.mktemp("bad-inputs")
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    os.link(checkpoint_files["sd1"], root / "models" / "Stable-diffusion" / "tiny.safetensors")
    args = app.parse_args(["--api", "--port", str(free_port()), "--device", "cpu", "--extensions-dir",
                           str(root / "extensions"), "--models-dir", str(root / "models"),
                           "--outputs-dir", str(root / "outputs"), "--cache-dir", str(root / "cache")])
    page, services = app.launch(args)
    client = httpx.Client(base_url=page.local_url.rstrip("/"), timeout=300)
    try:
        yield {"client": client, "root": root, "services": services}
    finally:
        client.close()
        page.close()
        services.close()


def still_serving(client: httpx.Client):
    assert client.get("/sdapi/v1/progress").status_code == 200


@pytest.mark.parametrize("name, path, body, status, words", REST_CASES, ids=[case[0] for case in REST_CASES])
def test_rest_api_bad_input(server, name, path, body, status, words):
    client = server["client"]
    if isinstance(body, str):
        answer = client.post(f"/sdapi/v1/{path}", content=body, headers={"content-type": "application/json"})
    else:
        answer = client.post(f"/sdapi/v1/{path}", json=body)
    assert answer.status_code == status, f"{name}: {answer.status_code} {answer.text[:300]}"
    detail = json.dumps(answer.json().get("detail"))
    for word in words:
        assert word.lower() in detail.lower(), f"{name}: '{word}' not in {detail[:300]}"
    still_serving(client)


def test_table_is_large_enough():
    assert len(REST_CASES) + len(UI_CASES) >= 40


# (name, trigger, values by elem_id (files: bytes to upload, or a FileData dict), words the error must contain)
UI_CASES = [
    ("width above the slider", "txt2img_generate", {"txt2img_width": 99_999}, ["2048"]),
    ("steps zero", "txt2img_generate", {"txt2img_steps": 0}, ["minimum"]),
    ("cfg NaN", "txt2img_generate", {"txt2img_cfg_scale": float("nan")}, ["cfg_scale"]),
    ("cfg infinity", "txt2img_generate", {"txt2img_cfg_scale": float("inf")}, ["maximum"]),
    ("huge batch", "txt2img_generate", {"txt2img_batch_size": 10_000}, ["maximum"]),
    ("sampler not offered", "txt2img_generate", {"txt2img_sampling": "Warp drive"}, ["Warp drive"]),
    ("overlong prompt", "txt2img_generate", {"txt2img_prompt": "red " * 6000}, ["prompt", "20000"]),
    ("img2img without an image", "img2img_generate", {"img2img_image": None}, ["upload an image"]),
    ("img2img SVG upload", "img2img_generate", {"img2img_image": ("x.svg", SVG)}, ["init_image", "SVG"]),
    ("img2img HTML upload", "img2img_generate", {"img2img_image": ("x.png", HTML)}, ["init_image", "PNG, JPEG"]),
    ("img2img bomb upload", "img2img_generate", {"img2img_image": ("x.png", bomb_png())}, ["init_image", "too large"]),
    ("img2img file outside the uploads", "img2img_generate", {"img2img_image": file_data(app.Path(app.__file__))},
     ["not uploaded"]),
    ("img2img strength NaN", "img2img_generate", {"img2img_image": ("ok.png", png_bytes()),
                                                   "img2img_denoising_strength": float("nan")}, ["denoising"]),
    ("outpaint without margins", "img2img_generate", {"img2img_chosen_mode": "outpaint",
                                                      "img2img_outpaint_image": ("ok.png", png_bytes())},
     ["outpaint_left/right/up/down", "all four margins are 0", "Extend left"]),
    ("upscale factor above the slider", "upscale_generate", {"upscale_image": ("ok.png", png_bytes()),
                                                             "upscale_scale": 1000}, ["maximum"]),
    ("upscaler not offered", "upscale_generate", {"upscale_image": ("ok.png", png_bytes()),
                                                  "upscaler_1": "../../ESRGAN/evil.pth"}, ["evil.pth"]),
    ("upscale without an image", "upscale_generate", {"upscale_image": None}, ["drop an image"]),
    ("upscale a GIF-named HTML file", "upscale_generate", {"upscale_image": ("x.gif", HTML)}, ["images", "PNG, JPEG"]),
    # An upload is checked as it arrives; what cannot be used is said under its input and taken out of it.
    ("img2img upload of a text file", "img2img_image", {"img2img_image": ("notimage.png", b"just text\n")},
     ["this file is not an image (PNG, JPEG, WEBP, BMP or GIF)"], "upload"),
    ("PNG Info upload of a text file", "pnginfo_image", {"pnginfo_image": ("notimage.png", b"just text\n")},
     ["this file is not an image (PNG, JPEG, WEBP, BMP or GIF)"], "upload"),
    ("upscale upload of a bomb", "upscale_image", {"upscale_image": ("x.png", bomb_png())}, ["too large"],
     "upload"),
]


@pytest.fixture(scope="module")
def ui(server):
    return UiSession(server["client"])


def ui_values(ui: UiSession, values: dict) -> dict:
    """Files given as (name, bytes) are uploaded first, as the browser does."""
    return {key: ui.upload(*value) if isinstance(value, tuple) else value for key, value in values.items()}


@pytest.mark.parametrize("name, trigger, values, words, event", [(*case, "click")[:5] for case in UI_CASES],
                         ids=[case[0] for case in UI_CASES])
def test_ui_event_bad_input(server, ui, name, trigger, values, words, event):
    success, messages = ui.call(trigger, ui_values(ui, values), event=event)
    if event == "upload":  # a page can send these: the event itself succeeds, no Gradio error toast
        assert success and "could not preprocess" not in messages.lower(), f"{name}: {messages[:600]}"
    assert "Traceback" not in messages and "internal error" not in messages.lower(), name
    shown = messages.lower()
    for word in words:
        assert word.lower() in shown, f"{name}: '{word}' not in {messages[:600]}"
    assert "generated in" not in shown  # no job ran
    still_serving(server["client"])


def test_after_all_that_both_doors_still_generate(server, ui):
    client = server["client"]
    answer = client.post("/sdapi/v1/txt2img", json=SMALL)
    assert answer.status_code == 200
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0]))))
    assert image.shape == (64, 64, 3) and image.std() > 0
    success, messages = ui.call("txt2img_generate", {"txt2img_prompt": "a red circle", "txt2img_steps": 2,
                                                     "txt2img_width": 64, "txt2img_height": 64})
    assert success and "Seed" in messages


def test_server_folders_are_refused_when_the_server_is_shared(make_services, tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "private.png")
    services = make_services(server_folders_refused="reading folders on the server is off (--listen/--share)")
    job = services.jobs.run_and_wait(ExtrasRequest(input_dir=str(tmp_path), upscaler_1="Lanczos"), timeout=120)
    assert job.status == "failed" and job.error_field == "input_dir" and "--listen/--share" in job.error
    assert not list((tmp_path / "outputs").rglob("*.png"))
    assert app.server_folder_access(app.parse_args(["--listen"])) is not None
    assert app.server_folder_access(app.parse_args(["--listen", "--enable-server-folders"])) is None
    assert app.server_folder_access(app.parse_args([])) is None
