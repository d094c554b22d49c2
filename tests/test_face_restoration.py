"""Face restoration: GFPGAN files (spandrel-built, random weights, the published layout), offline face detection on
a real photo, only the face region changing, visibility, refused files, the REST fields and the infotext."""
from __future__ import annotations

import base64
import io
import pathlib

import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from backend.core.infotext import parse_infotext, request_fields
from backend.core.requests import Img2ImgRequest, RequestError
from backend.http.routes import build_api_router
from backend.models.construction import ModelConstruction
from backend.models.weight_files import CheckpointError
from backend.upscale.face_detection import FACE_SIZE, TEMPLATE_LANDMARKS, Face, HaarFaceDetector, alignment_matrix
from backend.upscale.face_models import CODEFORMER_KEYS, FaceModelError, load_face_model
from backend.upscale.face_restoration import FaceRestorers
from backend.upscale.retinaface import RETINAFACE_FILE, RetinaFace, anchors, decode
from tests.conftest import run_txt2img

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture
def api(services):
    app = FastAPI()
    app.include_router(build_api_router(services))
    with TestClient(app) as client:
        yield client


def astronaut() -> Image.Image:
    return Image.fromarray(skimage_data.astronaut())  # a real photo scikit-image ships (public domain, NASA)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_base64(image: Image.Image) -> str:
    return base64.b64encode(png_bytes(image)).decode()


# --- detection -----------------------------------------------------------------------------------------
def test_the_face_in_a_real_photo_is_found_offline_and_aligned_on_its_eyes():
    faces = HaarFaceDetector().detect(np.asarray(astronaut()))
    assert len(faces) == 1
    x, y, width, height = faces[0].box
    # Eileen Collins' face: around (220, 115) in the 512x512 photo
    assert 180 <= x + width / 2 <= 260 and 80 <= y + height / 2 <= 150 and 60 <= width <= 140
    matrix = alignment_matrix(faces[0])
    (left_x, left_y), (right_x, right_y) = faces[0].eyes
    assert left_x < right_x and abs(left_y - right_y) < height / 5
    mapped = matrix @ np.array([[left_x, right_x], [left_y, right_y], [1, 1]])
    np.testing.assert_allclose(mapped.T, [(192.98, 239.95), (318.90, 240.19)], atol=0.5)  # the template's eyes


def test_an_image_without_faces_has_none():
    rng = np.random.default_rng(0)
    smooth = Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).resize((256, 256), Image.BILINEAR)
    assert HaarFaceDetector().detect(np.asarray(smooth)) == []


# --- model files ---------------------------------------------------------------------------------------
def test_a_gfpgan_file_in_the_published_layout_loads_through_spandrel(gfpgan_file):
    descriptor = load_face_model(gfpgan_file, ModelConstruction())
    assert descriptor.architecture.name == "GFPGAN" and descriptor.purpose == "FaceSR"


class Payload:
    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_a_hostile_pickle_in_the_gfpgan_folder_is_refused_and_never_runs(tmp_path, models_dir):
    marker = tmp_path / "code-ran"
    (models_dir / "GFPGAN").mkdir()
    torch.save({"params_ema": {"toRGB.0.weight": torch.zeros(1)}, "payload": Payload(marker)},
               models_dir / "GFPGAN" / "GFPGANv1.4.pth")
    faces = FaceRestorers(models_dir, torch.device("cpu"))
    with pytest.raises(CheckpointError) as error:
        faces.restore(astronaut())
    assert "GFPGANv1.4.pth" in str(error.value)
    assert not marker.exists()


def test_a_codeformer_file_is_recognised_and_refused_with_the_reason(tmp_path):
    path = tmp_path / "codeformer.pth"
    torch.save({"params_ema": {key: torch.zeros(2, 2) for key in CODEFORMER_KEYS}}, path)
    with pytest.raises(FaceModelError, match="codeformer.pth is a CodeFormer model: .*S-Lab License"):
        load_face_model(path, ModelConstruction())


def test_without_a_model_the_error_names_the_folder_to_put_one_in(models_dir):
    faces = FaceRestorers(models_dir, torch.device("cpu"))
    with pytest.raises(RequestError) as error:
        faces.restore(astronaut(), "GFPGAN", 1.0, "gfpgan_visibility")
    assert error.value.field == "gfpgan_visibility"
    assert f"put a GFPGAN model file (e.g. GFPGANv1.4.pth) in {models_dir / 'GFPGAN'}" in str(error.value)


def test_visibility_zero_returns_the_input_without_loading_anything(with_gfpgan, models_dir):
    faces = FaceRestorers(models_dir, torch.device("cpu"))
    image = astronaut()
    assert faces.restore(image, "GFPGAN", 0.0) is image
    assert faces.loads == 0


# --- through the API ------------------------------------------------------------------------------------
def test_extras_restores_only_the_face_region(api, with_gfpgan):
    source = astronaut()
    response = api.post("/sdapi/v1/extra-single-image", json={"image": png_base64(source), "upscaler_1": "None",
                                                               "gfpgan_visibility": 1})
    assert response.status_code == 200, response.text
    assert "GFPGAN visibility: 1" in response.json()["html_info"]
    result = np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["image"]))).convert("RGB"), np.int16)
    before = np.asarray(source, np.int16)
    changed = np.abs(result - before).max(axis=2) > 0
    face = HaarFaceDetector().detect(np.asarray(source))[0]
    x, y, width, height = face.box
    assert np.abs(result - before)[y:y + height, x:x + width].mean() > 10  # random weights: the face is redrawn
    # every changed pixel lies inside the aligned crop's square, mapped back onto the photo
    inverse = np.linalg.inv(np.vstack([alignment_matrix(face), [0, 0, 1]]))
    corners = inverse @ np.array([[0, FACE_SIZE, 0, FACE_SIZE], [0, 0, FACE_SIZE, FACE_SIZE], [1, 1, 1, 1]])
    rows, columns = np.nonzero(changed)
    assert corners[0].min() <= columns.min() and columns.max() <= corners[0].max()
    assert corners[1].min() <= rows.min() and rows.max() <= corners[1].max()
    assert changed.mean() < 0.35  # the rest of the photo (suit, flag, background) is untouched


def test_face_restorers_are_listed_as_a1111(api, models_dir):
    response = api.get("/sdapi/v1/face-restorers")
    assert response.status_code == 200
    assert response.json() == [{"name": "GFPGAN", "cmd_dir": str(models_dir / "GFPGAN")}]


def test_restore_faces_without_a_model_answers_422_naming_the_folder(api, models_dir):
    response = api.post("/sdapi/v1/txt2img", json={"prompt": "a face", "steps": 2, "width": 64, "height": 64,
                                                   "restore_faces": True})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("restore_faces: no GFPGAN model installed")
    assert str(models_dir / "GFPGAN") in response.json()["detail"]


def test_codeformer_as_the_face_restoration_model_answers_422_with_the_reason(api, with_gfpgan):
    response = api.post("/sdapi/v1/txt2img", json={
        "prompt": "a face", "steps": 2, "width": 64, "height": 64, "restore_faces": True,
        "override_settings": {"face_restoration_model": "CodeFormer", "code_former_weight": 0.3}})
    assert response.status_code == 422 and "S-Lab License" in response.json()["detail"]


def test_txt2img_restore_faces_writes_a1111_infotext_that_reads_back(services, with_gfpgan):
    job = run_txt2img(services, restore_faces=True, seed=5)
    infotext = job.result.images[0].infotext
    assert "Seed: 5, Face restoration: GFPGAN, Size: 64x64" in infotext
    fields = request_fields(parse_infotext(infotext))
    assert fields["restore_faces"] is True and fields["face_restoration_model"] == "GFPGAN"
    # a 64x64 picture of shapes has no face: the pixels are the plain image's
    plain = run_txt2img(services, seed=5)
    assert job.result.images[0].png != b"" and np.array_equal(
        np.asarray(Image.open(io.BytesIO(job.result.images[0].png))),
        np.asarray(Image.open(io.BytesIO(plain.result.images[0].png))))


# --- RetinaFace, when facexlib's detector file is installed ---------------------------------------------
def retinaface_state(seed: int = 0) -> dict:
    """facexlib's published layout: the network's state dict, keys prefixed "module." (trained with DataParallel)."""
    torch.manual_seed(seed)
    return {f"module.{key}": value for key, value in RetinaFace().state_dict().items()}


def test_a_retinaface_file_in_facexlibs_layout_replaces_the_cascade(models_dir):
    faces = FaceRestorers(models_dir, torch.device("cpu"))
    assert faces.detector().name == "OpenCV Haar cascade"
    (models_dir / "GFPGAN").mkdir()
    torch.save(retinaface_state(), models_dir / "GFPGAN" / RETINAFACE_FILE)
    detector = faces.detector()
    assert detector.name == "RetinaFace"
    found = detector.detect(np.asarray(astronaut()))  # random weights: any number of faces, but it runs
    assert all(face.landmarks.shape == (5, 2) for face in found)


def test_a_retinaface_file_that_does_not_fit_is_refused_by_name(models_dir):
    (models_dir / "GFPGAN").mkdir()
    state = retinaface_state()
    del state["module.LandmarkHead.2.conv1x1.weight"]
    torch.save(state, models_dir / "GFPGAN" / RETINAFACE_FILE)
    with pytest.raises(CheckpointError, match=f"{RETINAFACE_FILE} is not facexlib's RetinaFace"):
        FaceRestorers(models_dir, torch.device("cpu")).detector()


def test_a_hostile_pickle_as_the_detector_file_is_refused_and_never_runs(tmp_path, models_dir):
    marker = tmp_path / "code-ran"
    (models_dir / "GFPGAN").mkdir()
    torch.save({"body.conv1.weight": torch.zeros(1), "payload": Payload(marker)},
               models_dir / "GFPGAN" / RETINAFACE_FILE)
    with pytest.raises(CheckpointError):
        FaceRestorers(models_dir, torch.device("cpu")).detector()
    assert not marker.exists()


def test_retinaface_outputs_decode_to_boxes_and_landmarks_in_pixels():
    priors = anchors(64, 96)
    count = priors.shape[0]
    boxes, landmarks = torch.zeros(count, 4), torch.zeros(count, 10)
    scores = torch.tensor([[1.0, 0.0]]).repeat(count, 1)
    best = 5  # one anchor is a face: its box is the anchor itself shifted right by a tenth of its width
    scores[best] = torch.tensor([0.01, 0.99])
    boxes[best, 0] = 1.0  # x offset in units of variance x anchor width
    found = decode(boxes, scores, landmarks, priors, (96, 64))
    assert len(found) == 1
    centre_x, centre_y, width, height = (priors[best] * torch.tensor([96, 64, 96, 64])).tolist()
    centre_x += 0.1 * width
    np.testing.assert_allclose(found[0][0], [centre_x - width / 2, centre_y - height / 2, centre_x + width / 2,
                                             centre_y + height / 2], atol=1e-4)
    np.testing.assert_allclose(found[0][1], [[centre_x - 0.1 * width, centre_y]] * 5, atol=1e-4)


def test_five_landmarks_are_aligned_onto_the_template():
    template = np.array(TEMPLATE_LANDMARKS)
    angle, scale, shift = 0.3, 0.4, np.array([120.0, 80.0])  # a face rotated, smaller, elsewhere in the image
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = template @ rotation.T + shift
    face = Face((0, 0, 10, 10), (tuple(landmarks[0]), tuple(landmarks[1])), landmarks)
    matrix = alignment_matrix(face)
    np.testing.assert_allclose(landmarks @ matrix[:, :2].T + matrix[:, 2], template, atol=0.01)


def test_inpainting_restores_faces_before_pasting_the_input_back(services, with_gfpgan):
    """As A1111: the restored faces are composited like the rest of the image, so a face outside the mask stays
    exactly as it was (strength 0 keeps the input, so the face is found and restored before the composite)."""
    source = astronaut()
    mask = Image.new("L", source.size, 0)
    mask.paste(255, (0, 448, 512, 512))  # the bottom strip; the face is near the top
    job = services.jobs.run_and_wait(Img2ImgRequest(
        init_image=png_bytes(source), mask=png_bytes(mask), denoising_strength=0.0, mask_blur=0, steps=2,
        width=512, height=512, restore_faces=True), timeout=600)
    assert job.status == "done", job.error
    result = np.asarray(Image.open(io.BytesIO(job.result.images[0].png)).convert("RGB"), np.int16)
    assert np.array_equal(result[:440], np.asarray(source, np.int16)[:440])
    assert "Face restoration: GFPGAN" in job.result.images[0].infotext


def test_xyz_plot_face_restore_axis():
    from backend.core.requests import Txt2ImgRequest
    from extensions.xyz_plot import axes

    request = Txt2ImgRequest(steps=2, width=64, height=64, seed=1, extension_args={"xyz_plot": {
        "x_type": "Face restore", "x_values": "True, False"}})
    cells = [cell.request for cell in axes.plan_plot(request, "xyz_plot").cells]
    assert [cell.restore_faces for cell in cells] == [True, False]
