"""A1111's saving options over the REST API: the batch grid (grid_save, grid_format, return_grid, outdir_*_grids),
samples_save, API images in samples_format, override_settings for one job, and the stored noise options."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from backend.core.image_metadata import read_infotext
from backend.core.infotext import parse_infotext
from backend.http.routes import build_api_router

FAST = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64, "seed": 5, "save_images": True}


def decode(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def files(folder, pattern="*"):
    return sorted(path for path in folder.rglob(pattern) if path.is_file()) if folder.exists() else []


def test_a_batch_returns_and_saves_its_grid_first(client, services):
    response = client.post("/sdapi/v1/txt2img", json={**FAST, "batch_size": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    info = json.loads(body["info"])
    images = [decode(data) for data in body["images"]]
    assert len(images) == 3 and images[0].size == (128, 64)  # round(sqrt(2)) = 1 row of 2
    assert info["index_of_first_image"] == 1 and info["all_seeds"] == [5, 6] and len(info["infotexts"]) == 3
    grid = np.asarray(images[0].convert("RGB"))
    assert np.array_equal(grid[:, 64:], np.asarray(images[2].convert("RGB")))
    saved = files(services.outputs.root / "txt2img-grids")
    assert [path.name for path in saved] == ["grid-00000.png"]
    assert parse_infotext(read_infotext(Image.open(saved[0])))["Seed"] == "5"  # the first image's infotext
    assert len(files(services.outputs.root / "txt2img-images", "*.png")) == 2

    single = client.post("/sdapi/v1/txt2img", json=FAST).json()
    assert len(single["images"]) == 1 and json.loads(single["info"])["index_of_first_image"] == 0
    unsaved = client.post("/sdapi/v1/txt2img", json={**FAST, "batch_size": 2, "save_images": False}).json()
    assert len(unsaved["images"]) == 2  # A1111's API draws no grid when it saves nothing
    assert len(files(services.outputs.root / "txt2img-grids")) == 1


def test_grid_format_folder_return_grid_and_samples_save(client, services):
    services.set_options({"grid_format": "jpg", "outdir_txt2img_grids": "my-grids", "grid_save_to_dirs": False,
                          "return_grid": False, "samples_save": False, "n_rows": 2})
    body = client.post("/sdapi/v1/txt2img", json={**FAST, "n_iter": 2}).json()
    assert len(body["images"]) == 2 and json.loads(body["info"])["index_of_first_image"] == 0  # no grid shown
    grids = files(services.outputs.root / "my-grids")
    assert [path.name for path in grids] == ["grid-00000.jpg"]
    with Image.open(grids[0]) as grid:
        assert grid.format == "JPEG" and grid.size == (64, 128)  # n_rows 2: one column
        assert parse_infotext(read_infotext(grid))["Seed"] == "5"
    assert files(services.outputs.root / "txt2img-images") == []  # samples_save off: shown, not written

    services.set_options({"grid_save": False, "return_grid": True})
    body = client.post("/sdapi/v1/txt2img", json={**FAST, "batch_size": 2}).json()
    assert len(body["images"]) == 3 and decode(body["images"][0]).size == (64, 128)
    assert len(files(services.outputs.root / "my-grids")) == 1  # returned, not saved


@pytest.mark.parametrize("fmt, pil_format", [("jpg", "JPEG"), ("webp", "WEBP")])
def test_api_images_in_samples_format_with_exif_infotext(client, services, fmt, pil_format):
    services.set_options({"samples_format": fmt})
    body = client.post("/sdapi/v1/txt2img", json={**FAST, "save_images": False}).json()
    image = decode(body["images"][0])
    assert image.format == pil_format
    assert read_infotext(image) == json.loads(body["info"])["infotexts"][0]
    assert image.getexif().get_ifd(0x8769)[0x9286].startswith(b"UNICODE\x00")


def test_api_png_without_pnginfo(client, services):
    services.set_options({"enable_pnginfo": False})
    image = decode(client.post("/sdapi/v1/txt2img", json={**FAST, "save_images": False}).json()["images"][0])
    assert image.format == "PNG" and "parameters" not in image.info


def test_override_settings_for_one_job_then_restored_or_kept(client, services):
    body = {**FAST, "override_settings": {"samples_format": "webp", "jpeg_quality": 90, "not_an_option": 1}}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text  # keys that are no option are ignored, as A1111
    assert decode(response.json()["images"][0]).format == "WEBP"
    assert [path.suffix for path in files(services.outputs.root / "txt2img-images")] == [".webp"]
    assert services.options.current.samples_format == "png"  # restored after the job

    kept = client.post("/sdapi/v1/txt2img", json={**body, "override_settings_restore_afterwards": False})
    assert kept.status_code == 200
    assert services.options.current.samples_format == "webp" and services.options.stored()["jpeg_quality"] == 90

    bad = client.post("/sdapi/v1/txt2img", json={**FAST, "override_settings": {"jpeg_quality": 500}})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("override_settings: jpeg_quality: ")


def test_outdir_override_stays_inside_the_outputs_when_reachable(make_services):
    services = make_services(reachable_from_network=True)
    app = FastAPI()
    app.include_router(build_api_router(services))
    with TestClient(app) as client:
        response = client.post("/sdapi/v1/txt2img", json={**FAST, "override_settings": {"outdir_samples": "/etc"}})
    assert response.status_code == 422 and response.json()["detail"].startswith("override_settings.outdir_samples")


def test_stored_noise_options_feed_every_request(client, services):
    services.set_options({"eta_noise_seed_delta": 31337})
    stored = client.post("/sdapi/v1/txt2img", json={**FAST, "sampler_name": "Euler a"}).json()
    assert parse_infotext(json.loads(stored["info"])["infotexts"][0])["ENSD"] == "31337"
    overridden = client.post("/sdapi/v1/txt2img", json={**FAST, "sampler_name": "Euler a",
                                                        "override_settings": {"eta_noise_seed_delta": 0}}).json()
    assert "ENSD" not in parse_infotext(json.loads(overridden["info"])["infotexts"][0])
    assert not np.array_equal(np.asarray(decode(stored["images"][0])), np.asarray(decode(overridden["images"][0])))
