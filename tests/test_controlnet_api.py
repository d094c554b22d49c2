"""sd-webui-controlnet's REST shape, in process: /controlnet/* answers and `alwayson_scripts.controlnet` units on
/sdapi/v1/txt2img and img2img (detected maps appended to `images`, infotext per unit)."""
from __future__ import annotations

import base64
import io
import json
import shutil

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from backend.http.routes import build_api_router, build_controlnet_router
from tools.tiny_controlnets import write_tiny_controlnet


@pytest.fixture(scope="module")
def controlnet_file(tmp_path_factory):
    return write_tiny_controlnet(tmp_path_factory.mktemp("cn") / "control_v11p_sd15_canny.safetensors", "sd1",
                                 seed=1, strength=0.3)


@pytest.fixture
def services(make_services, models_dir, controlnet_file):
    (models_dir / "ControlNet").mkdir()
    shutil.copy(controlnet_file, models_dir / "ControlNet" / controlnet_file.name)
    return make_services()


@pytest.fixture
def client(services):
    app = FastAPI()
    app.include_router(build_api_router(services))
    app.include_router(build_controlnet_router(services))
    with TestClient(app) as client:
        yield client


def circle_b64(size=64) -> str:
    image = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(image).ellipse((12, 12, size - 12, size - 12), fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def decoded(data: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"), dtype=np.int16)


def test_listing_routes_answer_as_the_extension(client, services):
    title = services.controlnets.model_titles()[0]
    assert title.startswith("control_v11p_sd15_canny [") and len(title.split("[")[1]) == 9
    assert client.get("/controlnet/version").json() == {"version": 3}
    assert client.get("/controlnet/settings").json() == {"control_net_unit_count": 3}
    services.options.update({"control_net_unit_count": 5})  # the option the accordion's tab count follows
    assert client.get("/controlnet/settings").json() == {"control_net_unit_count": 5}
    assert client.get("/controlnet/model_list").json() == {"model_list": [title]}
    modules = client.get("/controlnet/module_list").json()
    assert modules["module_list"][0] == "none" and "depth" in modules["module_list"]  # internal names
    assert modules["module_detail"]["canny"] == {"model_free": False, "sliders": [
        {"name": "Resolution", "value": 512, "min": 64, "max": 2048, "step": 8},
        {"name": "Low Threshold", "value": 100, "min": 1, "max": 255, "step": 1},
        {"name": "High Threshold", "value": 200, "min": 1, "max": 255, "step": 1}]}
    aliases = client.get("/controlnet/module_list", params={"alias_names": True}).json()["module_list"]
    assert "depth_midas" in aliases and "invert (from white bg & black line)" in aliases
    types = client.get("/controlnet/control_types").json()["control_types"]
    assert types["Canny"] == {"module_list": ["none", "canny", "invert (from white bg & black line)"],
                              "model_list": ["None", title], "default_option": "canny", "default_model": title}
    assert types["All"]["model_list"] == ["None", title] and types["Depth"]["default_model"] == "None"


def test_detect_runs_a_preprocessor(client):
    answer = client.post("/controlnet/detect", json={"controlnet_module": "canny",
                                                     "controlnet_input_images": [circle_b64()],
                                                     "controlnet_processor_res": 64})
    assert answer.status_code == 200 and answer.json()["info"] == "Success"
    edges = decoded(answer.json()["images"][0])[:, :, 0]
    assert edges.shape == (64, 64) and edges[32, 32] == 0 and edges.max() == 255
    webuiapi_style = client.post("/controlnet/detect", json={"controlnet_module": "invert",
                                                             "controlnet_images": [circle_b64()]})
    assert decoded(webuiapi_style.json()["images"][0])[32, 32, 0] == 255  # the black disc inverted


@pytest.mark.parametrize("body, status, words", [
    ({"controlnet_module": "canny"}, 422, "No image selected"),
    ({"controlnet_module": "cany", "controlnet_input_images": ["x"]}, 422, "unknown preprocessor"),
    ({"controlnet_module": "depth_midas", "controlnet_input_images": ["x"]}, 422, "dpt_hybrid-midas-501f0c75.pt"),
    ({"controlnet_module": "inpaint_only", "controlnet_input_images": ["x"]}, 422, "controlnet_masks"),
    ({"controlnet_module": "canny", "controlnet_input_images": ["not base64!"]}, 422, "not valid base64"),
])
def test_detect_refusals_name_the_problem(client, body, status, words):
    answer = client.post("/controlnet/detect", json=body)
    assert answer.status_code == status and words in answer.json()["detail"]


def txt2img(client, units, **fields):
    body = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 3, "cfg_scale": 5,
            "sampler_name": "Euler", "alwayson_scripts": {"ControlNet": {"args": units}}, **fields}
    return client.post("/sdapi/v1/txt2img", json=body)


def test_units_in_alwayson_scripts_steer_txt2img(client, services):
    title = services.controlnets.model_titles()[0]
    unit = {"enabled": True, "module": "canny", "model": "control_v11p_sd15_canny", "image": circle_b64(),
            "processor_res": 64, "threshold_a": 64, "threshold_b": 64, "resize_mode": 1, "control_mode": 0}
    controlled = txt2img(client, [{"enabled": False}, unit])
    assert controlled.status_code == 200, controlled.text
    images = controlled.json()["images"]
    assert len(images) == 2  # the image, then the detected map
    info = json.loads(controlled.json()["info"])
    assert f'ControlNet 1: "Module: canny, Model: {title}, Weight: 1.0, Resize Mode: Crop and Resize' in \
        info["infotexts"][0]
    assert info["all_seeds"] == [3]  # the map is no generated image
    plain = txt2img(client, [])
    disabled = txt2img(client, [{**unit, "enabled": False}])
    weightless = txt2img(client, [{**unit, "weight": 0, "save_detected_map": False}])
    assert len(plain.json()["images"]) == len(disabled.json()["images"]) == len(weightless.json()["images"]) == 1
    assert np.array_equal(decoded(disabled.json()["images"][0]), decoded(plain.json()["images"][0]))
    assert np.array_equal(decoded(weightless.json()["images"][0]), decoded(plain.json()["images"][0]))
    assert np.abs(decoded(images[0]) - decoded(plain.json()["images"][0])).mean() > 1


@pytest.mark.parametrize("unit, field", [
    ({"model": "missing-model"}, "alwayson_scripts.controlnet.args[0].model"),
    ({"module": "depth_leres"}, "alwayson_scripts.controlnet.args[0].module"),
    ({"weight": 3}, "controlnet_units.0.weight"),
    ({"control_mode": "Loud"}, "controlnet_units.0.control_mode"),
    ({"image": "not base64!"}, "alwayson_scripts.controlnet.args[0].image"),
])
def test_bad_units_are_refused_naming_the_field(client, unit, field):
    answer = txt2img(client, [{"enabled": True, "module": "canny", "model": "control_v11p_sd15_canny",
                               "image": circle_b64(), **unit}])
    assert answer.status_code == 422 and field in answer.json()["detail"], answer.text
