"""openpose's preprocessors run when their files are in models/ControlNetPreprocessor/openpose/ (the extension's
layout): controlnet_aux's detector on our networks, filled from the published files by our safe reader. Random
weights find no person, so the maps are compared with controlnet_aux's own detector loading the same files, the
loaded weights with its loader's, and the drawing and the poses' JSON are checked on known keypoints."""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import warnings

import cv2
import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from backend.controlnet.annotator_files import WEIGHTED
from backend.controlnet.annotator_networks import OpenposeNetworks
from backend.controlnet.catalog import PreprocessorCatalog
from backend.controlnet.pose_runs import draw_poses, with_model
from backend.controlnet.preprocessors import resolve_parameters, run_detection, run_preprocessor
from backend.controlnet.weighted_runs import NETWORK_RUNS
from backend.core.errors import UserError
from backend.http.routes import build_controlnet_router

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # controlnet_aux warns about optional extras it does not need here
    from controlnet_aux import open_pose
    from controlnet_aux.open_pose.body import BodyResult, Keypoint

MODES = {"openpose": {"include_body": True}, "openpose_hand": {"include_body": True, "include_hand": True},
         "openpose_face": {"include_body": True, "include_face": True},
         "openpose_faceonly": {"include_body": False, "include_face": True},
         "openpose_full": {"include_body": True, "include_hand": True, "include_face": True}}


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    """The three published files (body 52M, hand 37M, face 38M parameters), random weights, in the published key
    layout: body and hand keys without their block names."""
    torch.manual_seed(0)
    networks = OpenposeNetworks(hand=True, face=True)
    folder = tmp_path_factory.mktemp("ControlNetPreprocessor")
    (folder / "downloads" / "openpose").mkdir(parents=True)
    files = {"body": "body_pose_model.pth", "hand": "hand_pose_model.pth", "face": "facenet.pth"}
    for part, name in files.items():
        state = getattr(networks, part).state_dict()
        if part != "face":
            state = {key.partition(".")[2]: value for key, value in state.items()}
        torch.save(state, folder / "downloads" / "openpose" / name)
    yield folder
    for name in files.values():
        (folder / "downloads" / "openpose" / name).unlink()


@pytest.fixture(scope="module")
def library_detector(weights_dir):
    """controlnet_aux's detector, loading the files with its own loader (torch.load: our own test files)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return open_pose.OpenposeDetector.from_pretrained(str(weights_dir / "downloads" / "openpose"))


@pytest.fixture(scope="module")
def catalog(weights_dir):
    return PreprocessorCatalog(weights_dir)


def person(height=64, width=64) -> np.ndarray:
    image = np.full((height, width, 3), 230, np.uint8)
    cv2.circle(image, (width // 2, height // 5), height // 8, (200, 150, 120), thickness=-1)
    cv2.line(image, (width // 2, height // 3), (width // 2, 2 * height // 3), (40, 40, 200), 5)
    cv2.line(image, (width // 4, height // 2), (3 * width // 4, height // 2), (40, 40, 200), 4)
    return image


def detect(catalog, module, image, resolution=64):
    preprocessor = catalog.get(module)
    return run_preprocessor(preprocessor, image, resolve_parameters(preprocessor, resolution, None, None))


@pytest.mark.parametrize("module", list(MODES))
def test_openpose_preprocessors_match_controlnet_aux(catalog, library_detector, module):
    image = person()
    detected = detect(catalog, module, image)
    expected = library_detector(image, detect_resolution=64, image_resolution=64, output_type="np", **MODES[module])
    assert detected.shape == (64, 64, 3) and detected.dtype == np.uint8
    assert np.array_equal(detected, expected)


def test_the_networks_hold_the_published_files_weights(catalog, library_detector):
    """Each part filled from its own file, keys mapped as controlnet_aux's loader maps them."""
    catalog.get("openpose_full").run(person(), resolution=64, threshold_a=0, threshold_b=0)
    run = NETWORK_RUNS["openpose_full"]
    paths = tuple(catalog.weights_dir / "downloads" / "openpose" / name
                  for name in ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"))
    networks = catalog.networks.get(paths, run.build, parts=run.parts)
    for ours, theirs in ((networks.body, library_detector.body_estimation.model),
                         (networks.hand, library_detector.hand_estimation.model),
                         (networks.face, library_detector.face_estimation.model)):
        theirs_state = theirs.state_dict()
        assert all(torch.equal(value, theirs_state[key]) for key, value in ours.state_dict().items())
    # the body network finds the same keypoint candidates as controlnet_aux's on the same input
    image = person()[:, :, ::-1].copy()
    ours_candidates, _ = with_model(open_pose.Body, networks.body)(image)
    theirs_candidates, _ = library_detector.body_estimation(image)
    assert len(ours_candidates) and np.array_equal(ours_candidates, theirs_candidates)


def pose(body=True, hand=True, face=True):
    """A standing figure on a 64x64 canvas: relative keypoints, some missing (None) as the detector leaves them."""
    body_points = [(0.5, 0.15), (0.5, 0.3), (0.35, 0.3), (0.3, 0.45), (0.28, 0.6), (0.65, 0.3), (0.7, 0.45),
                   (0.72, 0.6), (0.42, 0.6), (0.42, 0.8), None, (0.58, 0.6), (0.58, 0.8), None, (0.47, 0.12),
                   (0.53, 0.12), (0.44, 0.14), (0.56, 0.14)]
    keypoints = [Keypoint(*point) if point else None for point in body_points]
    # a hand lying along y = 0.9: the wrist, then each finger's joints to the right
    left_hand = [Keypoint(0.1 + 0.04 * (index % 5), 0.9) for index in range(21)] if hand else None
    face_points = [Keypoint(0.45 + 0.02 * (index % 6), 0.1 + 0.01 * (index // 6)) for index in range(12)]
    return open_pose.PoseResult(BodyResult(keypoints, 1.0, 16), left_hand, None, face_points if face else None)


def test_poses_are_drawn_as_controlnet_aux_draws_body_and_face():
    for body, face in ((True, False), (False, True), (True, True)):
        ours = draw_poses([pose(hand=False)], 64, 64, body=body, hand=False, face=face)
        theirs = open_pose.draw_poses([pose(hand=False)], 64, 64, draw_body=body, draw_hand=False, draw_face=face)
        assert np.array_equal(ours, theirs) and ours.any()
    # openpose_faceonly: the face alone
    face_only = draw_poses([pose()], 64, 64, body=False, hand=False, face=True)
    assert set(map(tuple, face_only.reshape(-1, 3))) == {(0, 0, 0), (255, 255, 255)}


def test_hands_are_drawn_in_the_extensions_colours():
    """controlnet_aux needs matplotlib for hands; the extension's colours: bone i at hue i/20, joints blue."""
    hand = [Keypoint(0.1, 0.5), Keypoint(0.5, 0.5), Keypoint(0.9, 0.5), *[None] * 18]
    canvas = draw_poses([open_pose.PoseResult(BodyResult([None] * 18, 0.0, 0), hand, None, None)], 64, 64,
                        body=True, hand=True, face=False)
    assert tuple(canvas[32, 19]) == (255, 0, 0)  # bone 0 (wrist to thumb), hue 0
    assert tuple(canvas[32, 44]) == (255, 77, 0)  # bone 1, hue 1/20: (1, 0.3, 0)
    assert tuple(canvas[32, 32]) == tuple(canvas[32, 6]) == (0, 0, 255)  # joints
    assert not canvas[20].any() and not canvas[:, 62].any()
    full = draw_poses([pose()], 64, 64, body=True, hand=True, face=True)
    assert not np.array_equal(full, draw_poses([pose()], 64, 64, body=True, hand=False, face=True))


def test_installed_openpose_files_make_them_available(catalog, tmp_path):
    assert set(MODES) <= set(catalog.available())
    (tmp_path / "openpose").mkdir()
    (tmp_path / "openpose" / "facenet.pth").write_bytes(b"")
    partial = PreprocessorCatalog(tmp_path)
    assert partial.needed_files()["openpose_faceonly"] == ["openpose/body_pose_model.pth"]
    with pytest.raises(UserError) as refused:
        partial.get("openpose_faceonly", field="controlnet.args[0].module")
    assert refused.value.status == 422 and refused.value.field == "controlnet.args[0].module"
    assert str(tmp_path / "openpose" / "body_pose_model.pth") in refused.value.message


def test_another_networks_file_in_the_hands_place_is_refused_naming_it(tmp_path, weights_dir):
    (tmp_path / "openpose").mkdir()
    source = weights_dir / "downloads" / "openpose"
    (tmp_path / "openpose" / "body_pose_model.pth").hardlink_to(source / "body_pose_model.pth")
    (tmp_path / "openpose" / "hand_pose_model.pth").hardlink_to(source / "facenet.pth")
    preprocessor = PreprocessorCatalog(tmp_path).get("openpose_hand", field="module")
    with pytest.raises(UserError, match="hand_pose_model.pth does not hold the handpose_model network") as refused:
        run_preprocessor(preprocessor, person(), resolve_parameters(preprocessor, 64, None, None))
    assert refused.value.status == 422 and refused.value.field == "module"


def test_openpose_maps_keep_the_aspect(catalog):
    """A 100x70 image at resolution 64: detected on the edge-padded 64x128, the pad taken off the map."""
    assert detect(catalog, "openpose_full", cv2.resize(person(64, 128), (100, 70))).shape == (64, 91, 3)


def test_every_network_run_names_a_part_for_each_file():
    """A network filled from several files says which part each fills, in the order the files are listed."""
    for name, run in NETWORK_RUNS.items():
        files = next(p for p in WEIGHTED if p.name == name).files
        assert len(run.parts) == len(files) if run.parts else len(files) == 1, name
    assert [part.submodule for part in NETWORK_RUNS["openpose_faceonly"].parts] == ["body", "face"]


@pytest.fixture
def known_poses(monkeypatch):
    """The detector finds the figure of `pose()` in any image (hands and face only where it is asked for them);
    the images it was given are kept."""
    seen = []

    def detect_poses(self, image, include_hand=False, include_face=False):
        seen.append(image.shape)
        return [pose(hand=include_hand, face=include_face)]
    monkeypatch.setattr(open_pose.OpenposeDetector, "detect_poses", detect_poses)
    return seen


def test_the_poses_are_the_extensions_openpose_json(catalog, known_poses):
    """encode_poses_as_json: x, y, 1 per keypoint relative to the canvas the detector saw (a missing one 0, 0, 0),
    null for parts not looked for; the canvas is the scaled image with its pad to multiples of 64 (64x128 for a
    64x80 image), and the map, without the pad, has the keypoints where the JSON puts them on that canvas."""
    image = cv2.resize(person(64, 80), (80, 64))
    preprocessor = catalog.get("openpose_hand")
    detection = run_detection(preprocessor, image, resolve_parameters(preprocessor, 64, None, None))
    assert known_poses == [(64, 128, 3)] and detection.pixels.shape == (64, 80, 3)
    poses = json.loads(json.dumps(detection.poses))  # plain JSON: no numpy numbers
    assert poses["canvas_width"] == 128 and poses["canvas_height"] == 64 and poses["animals"] == []
    [person_found] = poses["people"]
    assert set(person_found) == {"pose_keypoints_2d", "face_keypoints_2d", "hand_left_keypoints_2d",
                                 "hand_right_keypoints_2d"}
    body = person_found["pose_keypoints_2d"]
    assert len(body) == 18 * 3 and body[:6] == [0.5, 0.15, 1.0, 0.5, 0.3, 1.0] and body[30:33] == [0.0, 0.0, 0.0]
    hand = person_found["hand_left_keypoints_2d"]
    assert len(hand) == 21 * 3 and hand[3:6] == pytest.approx([0.14, 0.9, 1.0])
    assert person_found["hand_right_keypoints_2d"] is None and person_found["face_keypoints_2d"] is None
    for x, y, confidence in zip(body[0::3], body[1::3], body[2::3], strict=True):
        if confidence and x * 128 < 80:  # the keypoints drawn inside the map
            assert detection.pixels[int(y * 64), int(x * 128)].any(), (x, y)
    # openpose_faceonly draws the faces alone, and still gives the bodies found
    faceonly = catalog.get("openpose_faceonly")
    found = run_detection(faceonly, person(), resolve_parameters(faceonly, 64, None, None)).poses["people"][0]
    assert found["pose_keypoints_2d"][:3] == [0.5, 0.15, 1.0] and len(found["face_keypoints_2d"]) == 12 * 3


@pytest.fixture
def detect_client(make_services, models_dir, weights_dir):
    shutil.copytree(weights_dir / "downloads", models_dir / "ControlNetPreprocessor", copy_function=os.link)
    app = FastAPI()
    app.include_router(build_controlnet_router(make_services()))
    with TestClient(app) as client:
        yield client


def png_b64(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_detect_route_answers_the_poses_of_openpose_modules(detect_client):
    """One JSON per image beside the maps, as the extension's /controlnet/detect; random weights find nobody."""
    images = [png_b64(person()), png_b64(cv2.resize(person(64, 80), (80, 64)))]
    answer = detect_client.post("/controlnet/detect", json={"controlnet_module": "openpose",
                                                            "controlnet_input_images": images,
                                                            "controlnet_processor_res": 64})
    assert answer.status_code == 200, answer.text
    assert answer.json()["poses"] == [
        {"people": [], "animals": [], "canvas_height": 64, "canvas_width": 64},
        {"people": [], "animals": [], "canvas_height": 64, "canvas_width": 128}]
    maps = [np.asarray(Image.open(io.BytesIO(base64.b64decode(data)))) for data in answer.json()["images"]]
    assert [pixels.shape for pixels in maps] == [(64, 64, 3), (64, 80, 3)] and not any(m.any() for m in maps)
    canny = detect_client.post("/controlnet/detect", json={"controlnet_module": "canny",
                                                           "controlnet_input_images": images[:1]})
    assert canny.status_code == 200 and "poses" not in canny.json() and len(canny.json()["images"]) == 1
