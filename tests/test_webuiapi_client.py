"""A1111's own Python client, `webuiapi`, against a server process: its option calls (set, read back, switch
the model, used by the next image) and the listing calls of the rest of /sdapi/v1."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from backend.core.image_metadata import read_infotext
from tests.server_process import ServerProcess

webuiapi = pytest.importorskip("webuiapi")


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoint_files):
    root = tmp_path_factory.mktemp("webuiapi")
    models = root / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    for key in ("sd1", "sd1_other"):
        os.link(checkpoint_files[key], models / checkpoint_files[key].name)
    process = ServerProcess(root, root / "models", "--api", "--api-auth", "me:pw",
                            "--ckpt", "tiny-sd1.safetensors").start()
    yield process
    process.stop()


@pytest.fixture
def client(server):
    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler", steps=2)
    api.set_auth("me", "pw")
    return api


def test_option_calls_of_the_client(client, server):
    assert client.util_get_current_model().startswith("tiny-sd1.safetensors [")
    answer = client.set_options({"samples_format": "webp", "webp_lossless": True, "jpeg_quality": 70,
                                 "samples_filename_pattern": "[seed]-[steps]"})
    assert answer["changed"] == ["jpeg_quality", "samples_filename_pattern", "samples_format", "webp_lossless"]
    options = client.get_options()
    assert options["samples_format"] == "webp" and options["webp_lossless"] is True and options["jpeg_quality"] == 70
    assert "detail" in client.set_options({"jpeg_quality": 0})  # refused (422) with the key named
    assert client.get_options()["jpeg_quality"] == 70

    client.util_set_model("tiny-sd1-other")
    assert client.util_get_current_model().startswith("tiny-sd1-other.safetensors [")
    result = client.txt2img(prompt="a blue square", seed=11, width=64, height=64, steps=2, save_images=True)
    assert result.info["sd_model_name"] == "tiny-sd1-other" and result.image.size == (64, 64)
    (saved,) = server.outputs.rglob("*.webp")
    assert saved.name == "00000-11-2.webp"
    with Image.open(saved) as image:
        assert read_infotext(image) == result.info["infotexts"][0]
        assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(result.image.convert("RGB")))  # lossless
    client.util_set_model("tiny-sd1")


def test_listing_calls_of_the_client(client):
    flags = client.get_cmd_flags()
    assert flags["api"] is True and flags["api_auth"] == "<redacted>" and flags["ckpt"] == "tiny-sd1.safetensors"
    assert client.get_hypernetworks() == [] and client.get_realesrgan_models() == []
    picture = Image.new("RGB", (24, 16), (10, 200, 30))
    extras = client.extra_single_image(picture)  # the client's defaults: upscaler "None"
    assert extras.image.size == (24, 16) and extras.image.convert("RGB").getpixel((3, 3)) == (10, 200, 30)
