"""The demo ControlNet shipped beside the built-in model (tools/train_demo_controlnet.py): listed by default while
the demo model is the checkpoint, and it does what it was trained for, through the app's request path: a drawn
outline places an object of its shape while the prompt, naming no position, gives the colours."""
from __future__ import annotations

import base64
import io
import shutil

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from backend.controlnet.builtin_controlnet import BUILTIN_CONTROLNET_FILE, builtin_when
from backend.controlnet.control_types import control_type
from backend.controlnet.model_files import infer_config, legacy_model_hash, to_diffusers_keys
from backend.controlnet.service import ControlNets
from backend.core.requests import Txt2ImgRequest
from backend.core.settings import Settings
from backend.http.routes import build_api_router, build_controlnet_router
from backend.services import build_services
from tools.evaluate_demo_controlnet import drawn_outline
from tools.shapes_world import detect
from tools.tiny_controlnets import controlnet_to_original, write_tiny_controlnet
from tools.tiny_models import tiny_components

SEEDS = 4  # one request of a batch of 4: seeds 11..14


@pytest.fixture(scope="module")
def demo_services(tmp_path_factory):
    """A fresh install: no checkpoint in the models folder (the built-in demo model), one user ControlNet."""
    root = tmp_path_factory.mktemp("demo-install")
    write_tiny_controlnet(root / "models" / "ControlNet" / "control_sd15_user.safetensors", "sd1", seed=1)
    services = build_services(Settings(models_dir=root / "models", outputs_dir=root / "outputs",
                                       cache_dir=root / "cache", device="cpu"))
    yield services
    services.close()


@pytest.fixture(scope="module")
def demo_client(demo_services):
    app = FastAPI()
    app.include_router(build_api_router(demo_services))
    app.include_router(build_controlnet_router(demo_services))
    with TestClient(app) as http:
        yield http


def test_the_demo_controlnet_is_listed_beside_the_users(demo_services, demo_client):
    builtin_title = f"shapes-demo-controlnet [{legacy_model_hash(BUILTIN_CONTROLNET_FILE)}]"
    titles = demo_services.controlnets.model_titles()
    assert builtin_title in titles and any(title.startswith("control_sd15_user [") for title in titles)
    answer = demo_client.get("/controlnet/model_list")
    assert answer.status_code == 200 and builtin_title in answer.json()["model_list"]
    assert demo_services.controlnets.folder.find("shapes-demo-controlnet").path == BUILTIN_CONTROLNET_FILE


def test_the_control_type_filter_shows_it_under_what_it_was_trained_for(demo_services, demo_client):
    """Canny and Scribble (its name says neither), as the extension's filter shows a canny model under Canny."""
    builtin_title = f"shapes-demo-controlnet [{legacy_model_hash(BUILTIN_CONTROLNET_FILE)}]"
    types = demo_client.get("/controlnet/control_types").json()["control_types"]
    for tag in ("Canny", "Scribble"):
        assert types[tag]["model_list"] == ["None", builtin_title] and types[tag]["default_model"] == builtin_title
    assert builtin_title in types["All"]["model_list"]
    assert types["Depth"]["model_list"] == types["OpenPose"]["model_list"] == ["None"]
    # only the built-in file's own name: a user's model named like it is filtered by its name as any other
    catalog = demo_services.controlnets.preprocessors
    assert control_type("Canny", catalog, ["shapes-demo-controlnet-v2 [12345678]"])["model_list"] == ["None"]


def test_not_listed_when_other_checkpoints_replace_the_demo_model(services):
    assert not any(title.startswith("shapes-demo-controlnet") for title in services.controlnets.model_titles())


def test_a_missing_or_unreadable_file_leaves_the_list_working(tmp_path):
    user = write_tiny_controlnet(tmp_path / "ControlNet" / "control_sd15_user.safetensors", "sd1", seed=1)
    for broken in (tmp_path / "absent.safetensors", tmp_path / "a-folder.safetensors"):
        if broken.name.startswith("a-folder"):
            broken.mkdir()
        controlnets = ControlNets(tmp_path / "ControlNet", tmp_path / "pre", builtin=builtin_when(lambda: True, broken))
        assert [title.split(" [")[0] for title in controlnets.model_titles(refresh=True)] == [user.stem]


def test_a_users_file_of_the_same_name_is_found_first(tmp_path):
    user = tmp_path / "ControlNet" / "shapes-demo-controlnet.safetensors"
    user.parent.mkdir()
    shutil.copy(BUILTIN_CONTROLNET_FILE, user)
    controlnets = ControlNets(tmp_path / "ControlNet", tmp_path / "pre", builtin=builtin_when(lambda: True))
    assert controlnets.folder.find("shapes-demo-controlnet").path == user


def test_a_controlnet_with_a_shallower_hint_encoder_reads_back_exactly():
    """The demo ControlNet's hint encoder downsamples 4x (two stride-2 steps, as its autoencoder), not SD's 8x:
    lllyasviel's layout read back must keep every tensor where it was."""
    unet = tiny_components("sd1", 0)["unet"]
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16))
    state = to_diffusers_keys(controlnet_to_original(controlnet), "shallow.safetensors")
    original = controlnet.state_dict()
    assert state.keys() == original.keys()
    assert all(torch.equal(state[key], original[key]) for key in original)
    assert infer_config(state)["conditioning_embedding_out_channels"] == [8, 16]


def outline_unit(shape: str, position: str, **fields) -> dict:
    return {"module": "invert", "model": "shapes-demo-controlnet", "image": drawn_outline(shape, position),
            "save_detected_map": False, **fields}


def generate(services, prompt: str, units: list[dict]) -> list[Image.Image]:
    request = services.build_request(Txt2ImgRequest, {
        "prompt": prompt, "seed": 11, "batch_size": SEEDS, "steps": 10, "cfg_scale": 7.0, "width": 64, "height": 64,
        "sampler_name": "DPM++ 2M", "save_images": False, "controlnet_units": units})
    job = services.jobs.run_and_wait(request, timeout=300)
    assert job.status == "done", job.error
    return [Image.open(io.BytesIO(image.png)).convert("RGB") for image in job.result.images[:SEEDS]]


def places_and_shapes(images) -> list[tuple[str | None, str | None]]:
    return [(found.position, found.shape) for found in map(detect, images)]


def test_a_circle_outline_top_left_puts_a_circle_there(demo_services):
    found = places_and_shapes(generate(demo_services, "a red circle on a blue background",
                                       [outline_unit("circle", "top left")]))
    assert sum(place == "top left" for place, _ in found) >= 3, found
    assert sum(shape == "circle" for _, shape in found) >= 3, found
    # Without the ControlNet the same prompt and seeds do not pass (the prompt names no place): the test measures
    # the ControlNet, not the model's habits.
    plain = places_and_shapes(generate(demo_services, "a red circle on a blue background", []))
    assert sum(place == "top left" for place, _ in plain) < 3, plain


def test_a_square_outline_bottom_right_moves_the_object_there(demo_services):
    found = places_and_shapes(generate(demo_services, "a yellow square on a purple background",
                                       [outline_unit("square", "bottom right")]))
    assert sum(place == "bottom right" for place, _ in found) >= 3, found


def decoded(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def test_weight_0_and_a_disabled_unit_leave_the_image_exact(demo_client):
    def txt2img(units):
        answer = demo_client.post("/sdapi/v1/txt2img", json={
            "prompt": "a green star on a white background", "steps": 4, "width": 64, "height": 64, "seed": 5,
            "sampler_name": "Euler", "alwayson_scripts": {"controlnet": {"args": units}}})
        assert answer.status_code == 200, answer.text
        return [decoded(image) for image in answer.json()["images"]]

    image = base64.b64encode(drawn_outline("star", "top left")).decode()
    unit = {"enabled": True, "module": "invert", "model": "shapes-demo-controlnet", "image": image,
            "save_detected_map": False}
    plain, = txt2img([])
    controlled, = txt2img([unit])
    weightless, = txt2img([{**unit, "weight": 0}])
    disabled, = txt2img([{**unit, "enabled": False}])
    assert np.array_equal(weightless, plain) and np.array_equal(disabled, plain)
    assert np.abs(controlled.astype(int) - plain).mean() > 5  # the unit does act at weight 1
