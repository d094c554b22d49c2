"""A1111's own Python client, `webuiapi`, against a server process: its option calls (set, read back, switch
the model, used by the next image) and the listing calls of the rest of /sdapi/v1."""
from __future__ import annotations

import os

import httpx
import numpy as np
import pytest
from PIL import Image

from backend.core.image_metadata import read_infotext
from tests.server_process import ServerProcess
from tools.tiny_controlnets import write_tiny_controlnet

webuiapi = pytest.importorskip("webuiapi")


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoint_files):
    root = tmp_path_factory.mktemp("webuiapi")
    models = root / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    for key in ("sd1", "sd1_other"):
        os.link(checkpoint_files[key], models / checkpoint_files[key].name)
    write_tiny_controlnet(root / "models" / "ControlNet" / "control_v11p_sd15_canny.pth", "sd1", seed=1,
                          strength=0.3)
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


def test_controlnet_calls_of_the_client(client, server):
    """webuiapi's controlnet_* helpers and its ControlNetUnit, as sd-webui-controlnet answers them; the routes
    are behind the API's credentials like /sdapi/v1."""
    assert httpx.get(server.url + "/controlnet/model_list").status_code == 401
    assert client.controlnet_version() == 3
    (title,) = client.controlnet_model_list()
    assert title.startswith("control_v11p_sd15_canny [")
    assert {"none", "canny", "scribble_xdog", "tile_resample"} <= set(client.controlnet_module_list())
    drawing = Image.new("RGB", (64, 64), "white")
    drawing.paste((0, 0, 0), (16, 16, 48, 48))
    detected = client.controlnet_detect([drawing], module="canny", processor_res=64, threshold_a=100,
                                        threshold_b=200)
    edges = np.asarray(detected.images[0].convert("L"))
    assert edges[24:40, 24:40].max() == 0 and edges[14:18, 20:44].max() == 255  # the square's outline only
    unit = webuiapi.ControlNetUnit(image=drawing, module="canny", model="control_v11p_sd15_canny",
                                   processor_res=64, pixel_perfect=True, control_mode=2)
    controlled = client.txt2img(prompt="a red square", seed=4, width=64, height=64, steps=2,
                                controlnet_units=[unit])
    # a fresh dict: webuiapi's default alwayson_scripts={} is one shared dict that keeps the last call's units
    plain = client.txt2img(prompt="a red square", seed=4, width=64, height=64, steps=2, alwayson_scripts={})
    assert len(controlled.images) == 2 and len(plain.images) == 1  # the image and the detected map
    assert 'ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny [' in controlled.info["infotexts"][0]
    assert "Resize Mode: Resize and Fill" in controlled.info["infotexts"][0]  # webuiapi's default
    assert "Control Mode: ControlNet is more important" in controlled.info["infotexts"][0]
    difference = np.abs(np.asarray(controlled.image, np.int16) - np.asarray(plain.image, np.int16))
    assert difference.mean() > 1
