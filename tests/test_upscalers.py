"""Upscaler models (spandrel), tiling, the model cache, and the Extras job through the queue and the API."""
from __future__ import annotations

import base64
import io
import logging
import os
import pathlib
import time

import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw, PngImagePlugin

from backend.core.image_metadata import read_infotext
from backend.core.requests import ExtrasRequest, RequestError, build_request
from backend.core.settings import Settings
from backend.http.routes import build_api_router
from backend.upscale.service import Upscalers
from backend.upscale.tiling import TileOutOfMemory, image_to_tensor, run_tiled, run_with_oom_retry
from tests.tiny_upscalers import compact_state, esrgan_state, save, write_upscaler_folder

INFOTEXT = "a red square\nNegative prompt: blurry\nSteps: 3, Sampler: Euler, CFG scale: 5, Seed: 42, Size: 64x64"


def picture(width: int = 40, height: int = 32, seed: int = 0) -> Image.Image:
    """Smooth colours with a sharp shape: upscalers have something to do, results differ by method."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).resize((width, height), Image.BILINEAR)
    ImageDraw.Draw(small).rectangle((width // 4, height // 4, width // 2, height // 2), fill=(250, 250, 20))
    return small


def png(image: Image.Image, infotext: str | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    if infotext:
        info.add_text("parameters", infotext)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.fixture
def upscaler_files(models_dir):
    return write_upscaler_folder(models_dir)


def make_upscalers(root: pathlib.Path, **overrides) -> Upscalers:
    settings = Settings(**{"models_dir": root / "models", "outputs_dir": root / "outputs", "cache_dir": root / "cache",
                           **overrides})
    return Upscalers(settings, torch.device("cpu"), torch.float32)


@pytest.fixture
def upscalers(tmp_path, upscaler_files) -> Upscalers:
    return make_upscalers(tmp_path)


# --- discovery and detection ---------------------------------------------------------------------------
def test_model_files_are_found_with_architecture_and_scale(upscalers):
    entries = {entry.name: entry for entry in upscalers.entries}
    assert list(entries)[:3] == ["None", "Lanczos", "Nearest"]
    expected = {"tiny-esrgan-2x": ("ESRGAN", 2), "tiny-esrgan-4x": ("ESRGAN", 4),
                "tiny-realesrgan-x4plus": ("ESRGAN", 4), "tiny-compact-x2": ("RealESRGAN Compact", 2),
                "tiny-compact-x4": ("RealESRGAN Compact", 4)}
    for name, (architecture, scale) in expected.items():
        assert entries[name].usable, entries[name].error
        assert (entries[name].architecture, entries[name].scale) == (architecture, scale), name
    assert set(upscalers.names()) == {"None", "Lanczos", "Nearest", *expected}


@pytest.mark.parametrize("name,scale", [("tiny-esrgan-2x", 2), ("tiny-esrgan-4x", 4), ("tiny-compact-x2", 2),
                                        ("tiny-compact-x4", 4)])
def test_each_model_upscales_to_its_scale_and_is_not_a_plain_resize(upscalers, name, scale):
    source = picture()
    size = (source.width * scale, source.height * scale)
    result = upscalers.upscale(source, name, size)
    assert result.size == size
    lanczos = source.resize(size, Image.LANCZOS)
    assert np.abs(as_array(result) - as_array(lanczos)).mean() > 2  # the network ran


def test_real_esrgan_layout_gives_the_same_pixels_as_the_original_layout(upscalers):
    """The same weights in both published layouts (the x4plus one wrapped in params_ema) agree exactly."""
    source = picture(24, 20)
    size = (96, 80)
    original = upscalers.upscale(source, "tiny-esrgan-4x", size)
    real_esrgan = upscalers.upscale(source, "tiny-realesrgan-x4plus", size)
    assert np.array_equal(as_array(original), as_array(real_esrgan))


def test_detection_is_cached_by_path_size_and_mtime(tmp_path, upscaler_files):
    first = make_upscalers(tmp_path)
    assert first.entries
    assert first.registry.detections_run == len(upscaler_files)
    first.refresh()
    assert first.registry.detections_run == len(upscaler_files)  # nothing reloaded
    second = make_upscalers(tmp_path)  # a restarted server reads the cache file
    assert second.entries == first.entries and second.registry.detections_run == 0
    changed = upscaler_files["compact-2x"]
    save(changed, compact_state(4, seed=9), wrapper="params")
    os.utime(changed, (time.time() + 10, time.time() + 10))
    entries = {entry.name: entry for entry in second.refresh()}
    assert second.registry.detections_run == 1 and entries["tiny-compact-x2"].scale == 4


class Payload:
    """Unpickling this would create a marker file: a stand-in for a pickle that runs code."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_bad_files_are_listed_with_their_error_and_the_others_stay_usable(tmp_path, upscaler_files, models_dir):
    marker = tmp_path / "code-ran"
    torch.save({"params": {"body.0.weight": torch.zeros(1)}, "payload": Payload(marker)},
               models_dir / "ESRGAN" / "evil.pth")
    save(models_dir / "ESRGAN" / "unknown.safetensors", {"some.layer.weight": torch.zeros(4, 4)})
    (models_dir / "DAT").mkdir()
    (models_dir / "DAT" / "not-weights.pth").write_bytes(b"hello, this is text and not a model file")
    upscalers = make_upscalers(tmp_path)
    entries = {entry.name: entry for entry in upscalers.entries}
    assert not marker.exists(), "the pickle's code ran"
    assert "refusing to run its code" in entries["evil"].error
    assert "not an upscaler architecture spandrel recognises" in entries["unknown"].error
    assert "neither a safetensors file nor a PyTorch weights file" in entries["not-weights"].error
    assert {"evil", "unknown", "not-weights"}.isdisjoint(upscalers.names())
    assert "tiny-esrgan-2x" in upscalers.names()
    with pytest.raises(RequestError) as error:
        upscalers.resolve("evil", "upscaler_1")
    assert error.value.field == "upscaler_1" and "refusing to run its code" in str(error.value)
    with pytest.raises(RequestError) as error:
        upscalers.resolve("4x-UltraSharp", "upscaler_1")
    assert error.value.field == "upscaler_1" and "Lanczos" in str(error.value) and "tiny-compact-x4" in str(error.value)
    assert not marker.exists()


# --- running models ---------------------------------------------------------------------------------
def test_tiled_and_untiled_agree_and_the_blend_is_what_removes_seams():
    from spandrel import ModelLoader

    model = ModelLoader().load_from_state_dict(esrgan_state(2, seed=5)).eval()
    image = image_to_tensor(picture(56, 64, seed=3), torch.device("cpu"), torch.float32)
    calls = []

    def network(tile):
        calls.append(tuple(tile.shape[-2:]))
        return model(tile)

    whole = run_tiled(network, image, tile=0, overlap=0)
    calls.clear()
    tiled = run_tiled(network, image, tile=32, overlap=8)
    assert len(calls) == 6 and all(max(shape) <= 32 for shape in calls)
    assert tiled.shape == whole.shape == (1, 3, 128, 112)
    assert (tiled - whole).abs().max() < 0.01  # under 3 levels of 255 anywhere
    seams = run_tiled(network, image, tile=32, overlap=0)
    assert (seams - whole).abs().max() > 0.05  # without overlap the tile edges show


def test_out_of_memory_halves_the_tile_size_and_retries(caplog):
    image = torch.rand(1, 3, 80, 72, generator=torch.Generator().manual_seed(0))
    seen = []

    def network(tile):
        seen.append(max(tile.shape[-2:]))
        if max(tile.shape[-2:]) > 40:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return tile.repeat_interleave(2, -1).repeat_interleave(2, -2)

    with caplog.at_level(logging.WARNING, logger="backend.upscale.tiling"):
        result = run_with_oom_retry(network, image, tile=0, overlap=4)
    assert seen[0] == 80 and max(seen[1:]) <= 40
    assert "retrying with 40px tiles" in caplog.text
    expected = image.repeat_interleave(2, -1).repeat_interleave(2, -2)
    assert torch.allclose(result, expected, atol=1e-5)

    def always_out_of_memory(tile):
        raise RuntimeError("CUDA error: out of memory")

    with pytest.raises(TileOutOfMemory, match="out of memory even with"):
        run_with_oom_retry(always_out_of_memory, image, tile=64, overlap=4)


def test_a_model_is_loaded_once_and_the_cache_keeps_the_last_two(upscalers):
    source = picture(16, 16)
    upscalers.upscale(source, "tiny-compact-x2", (32, 32))
    upscalers.upscale(source, "tiny-compact-x2", (32, 32))
    assert upscalers.models.stats.loads == 1 and upscalers.models.stats.hits == 1
    upscalers.upscale(source, "tiny-esrgan-2x", (32, 32))
    upscalers.upscale(source, "tiny-compact-x2", (32, 32))
    assert upscalers.models.stats.loads == 2  # both fit in the cache
    upscalers.upscale(source, "tiny-compact-x4", (64, 64))  # a third model evicts the least recently used
    upscalers.upscale(source, "tiny-esrgan-2x", (32, 32))
    assert upscalers.models.stats.loads == 4 and upscalers.models.stats.evictions == 2


def test_targets_beyond_the_native_scale_run_the_model_again_then_lanczos(upscalers, monkeypatch):
    runs = []
    original = Upscalers._run_model

    def counting(self, descriptor, image, check):
        runs.append(image.size)
        return original(self, descriptor, image, check)

    monkeypatch.setattr(Upscalers, "_run_model", counting)
    source = picture(20, 16)
    three_x = upscalers.upscale(source, "tiny-compact-x2", (60, 48))
    assert runs == [(20, 16), (40, 32)] and three_x.size == (60, 48)
    runs.clear()
    half = upscalers.upscale(source, "tiny-compact-x2", (10, 8))
    assert runs == [] and half.size == (10, 8)  # a downscale never needs the model
    same = upscalers.upscale(source, "tiny-compact-x2", (20, 16))
    assert runs == [(20, 16)] and same.size == (20, 16)  # same size: run once (restoration), then resize


def test_lanczos_and_nearest_hit_the_exact_size(upscalers):
    source = picture(41, 29)
    lanczos = upscalers.upscale(source, "Lanczos", (97, 61))
    assert lanczos.size == (97, 61)
    assert np.array_equal(as_array(lanczos), as_array(source.resize((97, 61), Image.LANCZOS)))
    nearest = upscalers.upscale(source, "Nearest", (82, 58))
    assert np.array_equal(as_array(nearest), as_array(source.resize((82, 58), Image.NEAREST)))


def test_tile_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match="tile size"):
        make_upscalers(tmp_path, upscale_tile_size=8)
    with pytest.raises(ValueError, match="overlap"):
        make_upscalers(tmp_path, upscale_tile_size=64, upscale_tile_overlap=40)


# --- the Extras job -----------------------------------------------------------------------------------
def run_extras(services, **fields):
    job = services.jobs.run_and_wait(build_request(ExtrasRequest, fields), timeout=300)
    assert job.done, "job did not finish"
    return job


def saved(path: str) -> Image.Image:
    image = Image.open(path)
    image.load()
    return image


def test_batch_of_images_saved_to_extras_images_with_infotext_kept(services, upscaler_files):
    sources = [picture(seed=n) for n in range(3)]
    job = run_extras(services, images=[png(sources[0], INFOTEXT), png(sources[1]), png(sources[2], INFOTEXT)],
                     upscaler_1="tiny-compact-x2", upscaling_resize=2)
    assert job.status == "done", job.error
    images = job.result.images
    folder = services.outputs.folder("extras")
    assert sorted(p.name for p in folder.iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert [pathlib.Path(image.path).parent for image in images] == [folder] * 3
    first = saved(images[0].path)
    assert first.size == (80, 64) and read_infotext(first) == INFOTEXT
    assert first.info["postprocessing"] == "Postprocess upscale by: 2, Postprocess upscaler: tiny-compact-x2"
    assert images[0].seed == 42 and images[0].prompt == "a red square" and images[0].negative_prompt == "blurry"
    assert read_infotext(saved(images[1].path)) is None and images[1].seed == -1
    assert pathlib.Path(images[2].path).read_bytes() == images[2].png
    assert not np.array_equal(as_array(first), as_array(saved(images[2].path)))  # each source its own result


def test_a_server_folder_is_upscaled_file_by_file(services, tmp_path):
    folder = tmp_path / "inbox"
    folder.mkdir()
    (folder / "b.png").write_bytes(png(picture(seed=1), INFOTEXT))
    picture(seed=2).save(folder / "a.jpg", quality=95)
    (folder / "notes.txt").write_text("not an image")
    job = run_extras(services, input_dir=str(folder), resize_mode=1, upscaling_resize_w=100, upscaling_resize_h=50,
                     upscaling_crop=True, upscaler_1="Lanczos")
    assert job.status == "done", job.error
    assert [saved(image.path).size for image in job.result.images] == [(100, 50), (100, 50)]
    assert job.result.images[0].infotext == "" and read_infotext(saved(job.result.images[1].path)) == INFOTEXT
    assert "Postprocess crop to: 100x50" in job.result.images[1].postprocessing
    uncropped = run_extras(services, input_dir=str(folder), resize_mode=1, upscaling_resize_w=100,
                           upscaling_resize_h=50, upscaling_crop=False, upscaler_1="Lanczos")
    assert [saved(image.path).size for image in uncropped.result.images] == [(100, 80), (100, 80)]
    assert len(list(services.outputs.folder("extras").iterdir())) == 4


def test_upscaler_2_is_blended_in_by_its_visibility(services):
    source = picture()
    job = run_extras(services, images=[png(source)], upscaler_1="Lanczos", upscaler_2="Nearest",
                     extras_upscaler_2_visibility=0.25, upscaling_resize=3, save_images=False)
    assert job.status == "done", job.error
    result = job.result.images[0]
    size = (source.width * 3, source.height * 3)
    expected = Image.blend(source.resize(size, Image.LANCZOS), source.resize(size, Image.NEAREST), 0.25)
    assert result.path is None
    assert np.array_equal(as_array(Image.open(io.BytesIO(result.png))), as_array(expected))
    assert "Postprocess upscaler 2: Nearest" in result.postprocessing


@pytest.mark.parametrize("fields,field,message", [
    ({"upscaling_resize": 0}, "upscaling_resize", "greater than 0"),
    ({"upscaling_resize": -2}, "upscaling_resize", "greater than 0"),
    ({"upscaling_resize": 9}, "upscaling_resize", "at most 8"),
    ({"upscaling_resize": float("inf")}, "upscaling_resize", "greater than 0"),
    ({"resize_mode": 2}, "resize_mode", "between 0 and 1"),
    ({"upscaling_resize_w": 0, "resize_mode": 1}, "upscaling_resize_w", "between 1 and 8192"),
    ({"extras_upscaler_2_visibility": 1.5}, "extras_upscaler_2_visibility", "between 0 and 1"),
    ({"images": [b"not an image"]}, "images", "image 1: must be a PNG"),
    ({"input_dir": "/no/such/folder", "images": []}, "input_dir", "not a folder"),
    ({"images": []}, "images", "either images or input_dir"),
])
def test_bad_extras_requests_name_the_field(fields, field, message):
    with pytest.raises(RequestError) as error:
        build_request(ExtrasRequest, {"images": [png(picture())], **fields})
    assert error.value.field == field and message in str(error.value)


def test_extras_errors_found_when_the_job_starts(make_services, tmp_path):
    services = make_services(max_upscale_size=100)
    one = [png(picture())]  # 40x32
    cases = [
        ({"images": one, "upscaling_resize": 3}, "upscaling_resize",
         "would become 120x96; the largest side allowed is 100"),
        ({"images": one, "resize_mode": 1, "upscaling_resize_w": 200, "upscaling_resize_h": 50},
         "upscaling_resize_w", "would become 200x160"),
        ({"images": one, "upscaler_1": "4x-Missing"}, "upscaler_1",
         "no upscaler named '4x-Missing'; available: None, Lanczos"),
        ({"images": one, "upscaler_2": "Bicubic", "extras_upscaler_2_visibility": 0.5}, "upscaler_2",
         "no upscaler named"),
        ({"input_dir": str(tmp_path)}, "input_dir", "no images"),
    ]
    for fields, field, message in cases:
        job = run_extras(services, **fields)
        assert job.status == "failed" and job.error_field == field, (fields, job.error)
        assert message in job.error, job.error
    assert not services.outputs.folder("extras").exists()  # nothing half done


# --- REST API ---------------------------------------------------------------------------------------------
@pytest.fixture
def api(services, upscaler_files):
    app = FastAPI()
    app.include_router(build_api_router(services))
    with TestClient(app) as client:
        yield client


def test_api_lists_upscalers_and_latent_modes_as_a1111(api, upscaler_files):
    items = {item["name"]: item for item in api.get("/sdapi/v1/upscalers").json()}
    assert items["Lanczos"] == {"name": "Lanczos", "model_name": None, "model_path": None, "model_url": None,
                                "scale": 4}
    assert items["tiny-compact-x2"] == {"name": "tiny-compact-x2", "model_name": "tiny-compact-x2",
                                        "model_path": str(upscaler_files["compact-2x"]), "model_url": None,
                                        "scale": 2}
    modes = [item["name"] for item in api.get("/sdapi/v1/latent-upscale-modes").json()]
    assert modes[0] == "Latent" and "Latent (nearest-exact)" in modes and len(modes) == 6


def test_api_extra_single_and_batch_images(api, services):
    source = picture()
    body = {"image": base64.b64encode(png(source, INFOTEXT)).decode(), "upscaler_1": "tiny-esrgan-2x",
            "upscaling_resize": 1.5}
    response = api.post("/sdapi/v1/extra-single-image", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    image = Image.open(io.BytesIO(base64.b64decode(result["image"])))
    assert image.size == (60, 48) and read_infotext(image) == INFOTEXT
    assert result["html_info"] == "<p>Postprocess upscale by: 1.5, Postprocess upscaler: tiny-esrgan-2x</p>"
    assert not services.outputs.folder("extras").exists()  # A1111's API does not save extras
    batch = api.post("/sdapi/v1/extra-batch-images", json={
        "imageList": [{"data": base64.b64encode(png(picture(seed=n))).decode(), "name": f"{n}.png"} for n in range(2)],
        "upscaler_1": "Lanczos", "resize_mode": 1, "upscaling_resize_w": 64, "upscaling_resize_h": 64})
    assert batch.status_code == 200, batch.text
    sizes = [Image.open(io.BytesIO(base64.b64decode(data))).size for data in batch.json()["images"]]
    assert sizes == [(64, 64), (64, 64)]


@pytest.mark.parametrize("body,status,text", [
    ({"upscaler_1": "Lanczos", "upscaling_resize": 0}, 422, "upscaling_resize"),
    ({"upscaler_1": "nope"}, 422, "upscaler_1: no upscaler named 'nope'"),
    ({"upscaler_1": "Lanczos", "gfpgan_visibility": 0.5}, 422, "gfpgan_visibility: no GFPGAN model installed"),
    ({"upscaler_1": "Lanczos", "image": "%%%"}, 422, "image: not valid base64"),
])
def test_api_extras_errors(api, body, status, text):
    payload = {"image": base64.b64encode(png(picture())).decode(), **body}
    response = api.post("/sdapi/v1/extra-single-image", json=payload)
    assert response.status_code == status, response.text
    assert text in response.json()["detail"]
