"""Several init images in one img2img request, as A1111: the batch is one image per init image (image i starts
from init_images[i], with the seed the batch gives it); more init images than batch_size is a 422."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from backend.http.routes import build_api_router

FAST = {"prompt": "a square", "steps": 2, "width": 64, "height": 64, "seed": 40, "denoising_strength": 0.5,
        "sampler_name": "Euler"}


@pytest.fixture
def client(make_services):
    app = FastAPI()
    app.include_router(build_api_router(make_services()))
    with TestClient(app) as http:
        yield http


def png_b64(colour) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def pixels(data: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"), dtype=np.int16)


def test_each_image_of_the_batch_starts_from_its_own_init_image(client):
    red, blue = png_b64((220, 20, 20)), png_b64((20, 20, 220))
    response = client.post("/sdapi/v1/img2img", json={**FAST, "init_images": [red, blue], "batch_size": 4})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["images"]) == 2 and json.loads(body["info"])["all_seeds"] == [40, 41]  # batch_size -> 2
    first, second = (pixels(data) for data in body["images"])
    for made, init, seed in ((first, red, 40), (second, blue, 41)):  # the pixels of that image made on its own
        alone = client.post("/sdapi/v1/img2img", json={**FAST, "init_images": [init], "seed": seed}).json()
        assert np.array_equal(made, pixels(alone["images"][0]))
    assert not np.array_equal(first, second)

    refused = client.post("/sdapi/v1/img2img", json={**FAST, "init_images": [red, blue, red], "batch_size": 2})
    assert refused.status_code == 422 and refused.json()["detail"].startswith("init_images: 3 images for batch_size 2")
