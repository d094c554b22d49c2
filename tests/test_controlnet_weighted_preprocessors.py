"""Preprocessors that need weights run when their files are in models/ControlNetPreprocessor/ (the extension's
annotator layout): line art and soft edge, with controlnet_aux's networks, random weights saved at test time."""
from __future__ import annotations

import base64
import contextlib
import io
import os
import pickle
import shutil
import warnings
from functools import partial
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from backend.controlnet.catalog import PreprocessorCatalog
from backend.controlnet.preprocessors import resolve_parameters, run_preprocessor
from backend.core.errors import UserError
from backend.http.routes import build_controlnet_router

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # controlnet_aux warns about optional extras it does not need here
    from controlnet_aux.hed import ControlNetHED_Apache2, HEDdetector
    from controlnet_aux.leres import LeresDetector
    from controlnet_aux.leres.leres.multi_depth_model_woauxi import RelDepthModel
    from controlnet_aux.lineart import Generator, LineartDetector
    from controlnet_aux.lineart_anime import LineartAnimeDetector, UnetGenerator
    from controlnet_aux.midas import MidasDetector
    from controlnet_aux.midas.midas.dpt_depth import DPTDepthModel
    from controlnet_aux.mlsd import MLSDdetector
    from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large
    from controlnet_aux.normalbae import NormalBaeDetector
    from controlnet_aux.normalbae.nets.NNET import NNET
    from controlnet_aux.pidi import PidiNetDetector
    from controlnet_aux.pidi.model import pidinet
    from controlnet_aux.teed import TEEDdetector
    from controlnet_aux.teed.ted import TED

# the extension's files, in its annotator/downloads/<folder>/ layout
FILES = {"lineart": "lineart/sk_model.pth", "lineart_coarse": "lineart/sk_model2.pth", "hed": "hed/ControlNetHED.pth",
         "pidinet": "pidinet/table5_pidinet.pth", "softedge_teed": "TEED/7_model.pth",
         "mlsd": "mlsd/mlsd_large_512_fp32.pth", "lineart_anime": "lineart_anime/netG.pth"}


def random_networks() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    networks = {"lineart": Generator(3, 1, 3), "lineart_coarse": Generator(3, 1, 3), "hed": ControlNetHED_Apache2(),
                "pidinet": pidinet(), "softedge_teed": TED()}
    with torch.no_grad():  # a learnt mean, so HED's input normalisation is exercised too
        networks["hed"].norm.copy_(torch.tensor([100.0, 110.0, 120.0]).view(1, 3, 1, 1))
    torch.manual_seed(1)  # random M-LSD weights that find a few segments at the default thresholds, more below
    networks["mlsd"] = MobileV2_MLSD_Large()
    norm = partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)  # as the extension builds it
    networks["lineart_anime"] = UnetGenerator(3, 1, 8, 64, norm_layer=norm)  # 54M parameters, a 218 MB file
    return {name: network.eval() for name, network in networks.items()}


@pytest.fixture(scope="session")
def midas_file(tmp_path_factory) -> tuple[torch.nn.Module, object]:
    """MiDaS DPT-Hybrid is large (123M parameters, a 490 MB file): built and written once per test session."""
    torch.manual_seed(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm renames the backbone ("deprecated model name")
        network = DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True).eval()
    path = tmp_path_factory.mktemp("midas") / "dpt_hybrid-midas-501f0c75.pt"
    torch.save(network.state_dict(), path)
    yield network, path
    path.unlink()  # pytest keeps the last runs' temporary folders: not half a gigabyte each


@pytest.fixture(scope="session")
def normal_bae_file(tmp_path_factory) -> tuple[torch.nn.Module, object]:
    """normal_bae's network (72M parameters, a 290 MB file), saved as published: {"model": DataParallel keys}."""
    torch.manual_seed(3)
    with contextlib.redirect_stdout(io.StringIO()):
        network = NNET(SimpleNamespace(mode="client", architecture="BN", pretrained="scannet", sampling_ratio=0.4,
                                       importance_ratio=0.7)).eval()
    path = tmp_path_factory.mktemp("normal_bae") / "scannet.pt"
    torch.save({"model": {f"module.{key}": value for key, value in network.state_dict().items()}}, path)
    yield network, path
    path.unlink()


@pytest.fixture(scope="session")
def leres_file(tmp_path_factory) -> tuple[torch.nn.Module, object]:
    """LeReS on ResNeXt-101 (115M parameters, a 460 MB file), saved as published: {"depth_model": DataParallel
    keys}."""
    torch.manual_seed(4)
    network = RelDepthModel(backbone="resnext101").eval()
    path = tmp_path_factory.mktemp("leres") / "res101.pth"
    torch.save({"depth_model": {f"module.{key}": value for key, value in network.state_dict().items()}}, path)
    yield network, path
    path.unlink()


@pytest.fixture(scope="module")
def networks(midas_file, normal_bae_file, leres_file):
    return {**random_networks(), "depth": midas_file[0], "normal_bae": normal_bae_file[0], "depth_leres": leres_file[0]}


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory, networks, midas_file, normal_bae_file, leres_file):
    folder = tmp_path_factory.mktemp("ControlNetPreprocessor")
    large = [folder / "downloads" / "midas" / midas_file[1].name,
             folder / "downloads" / "normal_bae" / normal_bae_file[1].name,
             folder / "downloads" / "leres" / leres_file[1].name]
    for link, saved in zip(large, (midas_file[1], normal_bae_file[1], leres_file[1]), strict=True):
        link.parent.mkdir(parents=True)
        os.link(saved, link)
    for name, relative in FILES.items():
        path = folder / "downloads" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        state = networks[name].state_dict()
        if name in ("pidinet", "lineart_anime"):  # published as DataParallel checkpoints
            state = {f"module.{key}": value for key, value in state.items()}
            state = {"state_dict": state} if name == "pidinet" else state
        torch.save(state, path)
    yield folder
    for link in large:
        link.unlink()


@pytest.fixture(scope="module")
def catalog(weights_dir):
    return PreprocessorCatalog(weights_dir)


def drawing(height=64, width=64) -> np.ndarray:
    image = np.full((height, width, 3), 255, np.uint8)
    cv2.circle(image, (width // 3, height // 2), height // 3, (200, 30, 30), thickness=-1)
    cv2.line(image, (width // 2, 8), (width - 8, height - 8), (0, 0, 0), 3)
    return image


def detect(catalog, module, image, resolution, threshold_a=None):
    preprocessor = catalog.get(module)
    return run_preprocessor(preprocessor, image, resolve_parameters(preprocessor, resolution, threshold_a, None))


def library_map(networks, module, image, resolution, safe_steps=2, mlsd_thresholds=(0.1, 0.1),
                background_threshold=0.4, leres_thresholds=(0, 0)) -> np.ndarray:
    """The same map from controlnet_aux's own detectors (the extension's processing: for an image whose sides are
    multiples of 64 at this resolution, no padding or rounding differs)."""
    if module == "softedge_teed":
        return TEEDdetector(networks[module])(image, detect_resolution=resolution, safe_steps=safe_steps,
                                              output_type="np")
    common = {"detect_resolution": resolution, "image_resolution": resolution, "output_type": "np"}
    if module == "depth":
        return MidasDetector(networks["depth"])(image, **common)
    if module == "normal_map":
        return MidasDetector(networks["depth"])(image, bg_th=background_threshold, depth_and_normal=True, **common)[1]
    if module == "normal_bae":
        return NormalBaeDetector(networks["normal_bae"])(image, **common)
    if module == "mlsd":
        return MLSDdetector(networks[module])(image, *mlsd_thresholds, **common)
    if module == "depth_leres":
        return LeresDetector(networks[module], None)(image, *leres_thresholds, **common)
    if module == "lineart_anime":
        return LineartAnimeDetector(networks[module])(image, **common)
    if module.startswith("lineart"):
        return LineartDetector(networks[module], networks[module])(image, **common)
    kind, _, variant = module.partition("_")
    if module.startswith("scribble"):
        kind, variant = variant, "scribble"
    detector = HEDdetector(networks["hed"]) if kind == "hed" else PidiNetDetector(networks["pidinet"])
    return detector(image, safe=variant == "safe", scribble=variant == "scribble", **common)


RUNNING = ["lineart", "lineart_coarse", "lineart_anime", "hed", "hed_safe", "scribble_hed", "pidinet", "pidinet_safe",
           "pidinet_scribble", "softedge_teed", "mlsd", "depth", "depth_leres", "normal_bae"]


@pytest.mark.parametrize("module", RUNNING)
def test_installed_preprocessors_run_their_network(catalog, networks, module):
    image = drawing()
    detected = detect(catalog, module, image, 64)
    assert detected.shape == (64, 64, 3) and detected.dtype == np.uint8
    assert np.array_equal(detected, library_map(networks, module, image, 64))
    assert not np.array_equal(detected, image)
    if module != "normal_bae":
        assert np.array_equal(detected[:, :, 0], detected[:, :, 2])  # a gray map
    else:  # a normal per pixel, in colour
        assert not np.array_equal(detected[:, :, 0], detected[:, :, 2])
    if "scribble" in module or module == "mlsd":
        assert set(np.unique(detected)) <= {0, 255}
    if module in ("depth", "depth_leres"):  # relative depth, spread over the whole range
        assert detected.min() == 0 and detected.max() == 255


def test_teed_takes_its_safe_steps_slider(catalog, networks):
    preprocessor = catalog.get("softedge_teed")
    assert (preprocessor.slider_1.label, preprocessor.slider_1.value, preprocessor.slider_1.maximum) == (
        "Safe Steps", 2, 10)
    image = drawing()
    raw = detect(catalog, "softedge_teed", image, 64, threshold_a=0)
    assert np.array_equal(raw, library_map(networks, "softedge_teed", image, 64, safe_steps=0))
    assert np.array_equal(detect(catalog, "softedge_teed", image, 64, threshold_a=-1),  # out of range: default 2
                          library_map(networks, "softedge_teed", image, 64, safe_steps=2))
    assert not np.array_equal(raw, detect(catalog, "softedge_teed", image, 64, threshold_a=2))


def test_mlsd_takes_its_value_and_distance_thresholds(catalog, networks):
    preprocessor = catalog.get("mlsd")
    assert [(s.label, s.value, s.minimum, s.maximum) for s in (preprocessor.slider_1, preprocessor.slider_2)] == [
        ("MLSD Value Threshold", 0.1, 0.01, 2.0), ("MLSD Distance Threshold", 0.1, 0.01, 20.0)]
    image = drawing()
    default = detect(catalog, "mlsd", image, 64)
    low = run_preprocessor(preprocessor, image, resolve_parameters(preprocessor, 64, 0.01, 0.01))
    assert np.array_equal(low, library_map(networks, "mlsd", image, 64, mlsd_thresholds=(0.01, 0.01)))
    assert np.count_nonzero(low) > np.count_nonzero(default) > 0
    # no segment passes: a black map (controlnet_aux's decoder fails on the empty result; the extension draws none)
    none = run_preprocessor(preprocessor, image, resolve_parameters(preprocessor, 64, 2.0, 20.0))
    assert none.shape == (64, 64, 3) and not none.any()


def test_leres_takes_its_remove_near_and_background_sliders(catalog, networks):
    preprocessor = catalog.get("depth_leres")
    assert [(slider.label, slider.value, slider.minimum, slider.maximum, slider.step)
            for slider in (preprocessor.slider_1, preprocessor.slider_2)] == [
        ("Remove Near %", 0, 0, 100, 0.1), ("Remove Background %", 0, 0, 100, 0.1)]
    image = drawing()
    full = detect(catalog, "depth_leres", image, 64)
    trimmed = run_preprocessor(preprocessor, image, resolve_parameters(preprocessor, 64, 30, 40))
    assert np.array_equal(trimmed, library_map(networks, "depth_leres", image, 64, leres_thresholds=(30, 40)))
    # the far end under 40 % (of the inverted map) goes black; the near end (under 30 % before inverting) white
    assert np.count_nonzero(trimmed == 0) > np.count_nonzero(full == 0)
    assert trimmed[trimmed > 0].min() > 0.4 * 255 and np.count_nonzero(trimmed == 255) > np.count_nonzero(full == 255)


def test_normal_midas_takes_its_background_threshold(catalog, networks):
    preprocessor = catalog.get("normal_midas")
    assert (preprocessor.name, preprocessor.slider_1.label, preprocessor.slider_1.value) == (
        "normal_map", "Normal Background Threshold", 0.4)
    image = drawing()
    default = detect(catalog, "normal_map", image, 64)
    assert np.array_equal(default, library_map(networks, "normal_map", image, 64))
    flat = detect(catalog, "normal_map", image, 64, threshold_a=1.0)  # all background: every normal faces the camera
    assert np.array_equal(flat, library_map(networks, "normal_map", image, 64, background_threshold=1.0))
    assert not np.array_equal(default, flat) and len(np.unique(flat.reshape(-1, 3), axis=0)) <= 2
    assert default[..., 0].min() > 127  # facing the camera: its component comes first (the extension flips zyx)
    # the aspect kept, as the other maps (here, where the network is still loaded: reading it again is slow)
    assert detect(catalog, "normal_map", cv2.resize(drawing(64, 128), (100, 70)), 64).shape == (64, 91, 3)


def test_maps_keep_the_aspect_at_the_requested_resolution(catalog):
    """A 100x70 image at resolution 64: short side 64, padded to 64x128 for the network, the pad taken off."""
    image = cv2.resize(drawing(64, 128), (100, 70))
    for module in ("lineart", "lineart_anime", "hed", "pidinet", "softedge_teed", "mlsd", "depth_leres", "normal_bae"):
        assert detect(catalog, module, image, 64).shape == (64, 91, 3), module


def test_installed_preprocessors_are_listed_as_available(catalog):
    labels = catalog.available()
    assert {"lineart_realistic", "lineart_coarse", "lineart_anime", "softedge_hed", "softedge_hedsafe", "scribble_hed",
            "softedge_pidinet", "softedge_pidisafe", "scribble_pidinet", "softedge_teed", "mlsd",
            "depth_midas", "normal_midas", "normal_bae", "depth_leres"} <= set(labels)
    assert "depth_zoe" not in labels
    needed = catalog.needed_files()
    assert needed["lineart_realistic"] == [] and needed["softedge_hed"] == []
    assert needed["depth_zoe"] == ["zoedepth/ZoeD_M12_N.pt"] and needed["depth_midas"] == needed["normal_bae"] == []
    assert catalog.get("softedge_hed").public_name == "softedge_hed" and catalog.get("hed").name == "hed"


@pytest.mark.parametrize(("module", "needed"), [("lineart_coarse", "lineart/sk_model2.pth"),
                                              ("lineart_anime", "lineart_anime/netG.pth"),
                                              ("mlsd", "mlsd/mlsd_large_512_fp32.pth"),
                                              ("depth_midas", "midas/dpt_hybrid-midas-501f0c75.pt"),
                                              ("normal_bae", "normal_bae/scannet.pt"),
                                              ("depth_leres", "leres/res101.pth")])
def test_a_missing_file_is_still_refused_naming_it(tmp_path, module, needed):
    empty = PreprocessorCatalog(tmp_path)
    assert empty.available() == []
    with pytest.raises(UserError) as refused:
        empty.get(module, field="controlnet.args[0].module")
    assert refused.value.status == 422 and refused.value.field == "controlnet.args[0].module"
    assert str(tmp_path / needed) in refused.value.message


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_a_hostile_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "the pickle ran"
    (tmp_path / "hed").mkdir()
    (tmp_path / "hed" / "ControlNetHED.pth").write_bytes(pickle.dumps({"norm": RunsCode(str(marker))}, protocol=2))
    preprocessor = PreprocessorCatalog(tmp_path).get("softedge_hed", field="controlnet_module")
    with pytest.raises(UserError) as refused:
        run_preprocessor(preprocessor, drawing(), resolve_parameters(preprocessor, 64, None, None))
    assert refused.value.status == 422 and refused.value.field == "controlnet_module"
    assert "ControlNetHED.pth" in refused.value.message and "refusing to run" in refused.value.message
    assert not marker.exists()


def test_another_networks_file_is_refused_naming_it(tmp_path, networks):
    (tmp_path / "lineart").mkdir()
    torch.save(networks["pidinet"].state_dict(), tmp_path / "lineart" / "sk_model.pth")
    preprocessor = PreprocessorCatalog(tmp_path).get("lineart")
    with pytest.raises(UserError, match="sk_model.pth does not hold the Generator network"):
        run_preprocessor(preprocessor, drawing(), resolve_parameters(preprocessor, 64, None, None))


def png_b64(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_detect_route_answers_the_map(make_services, models_dir, weights_dir, networks):
    shutil.copytree(weights_dir, models_dir / "ControlNetPreprocessor", copy_function=os.link,  # Forge's folder
                    ignore=shutil.ignore_patterns("midas", "normal_bae", "leres"))
    services = make_services()
    app = FastAPI()
    app.include_router(build_controlnet_router(services))
    image = drawing()
    with TestClient(app) as client:
        answer = client.post("/controlnet/detect", json={"controlnet_module": "lineart_realistic",
                                                         "controlnet_input_images": [png_b64(image)],
                                                         "controlnet_processor_res": 64})
        assert answer.status_code == 200, answer.text
        detected = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0]))).convert("RGB"))
        assert np.array_equal(detected, library_map(networks, "lineart", image, 64))
        missing = client.post("/controlnet/detect", json={"controlnet_module": "lineart_anime_denoise",
                                                          "controlnet_input_images": [png_b64(image)]})
        assert missing.status_code == 422 and "manga_line/erika.pth" in missing.json()["detail"]
        details = client.get("/controlnet/module_list").json()["module_detail"]
        assert [slider["name"] for slider in details["softedge_teed"]["sliders"]] == ["Resolution", "Safe Steps"]
        assert [slider["name"] for slider in details["hed"]["sliders"]] == ["Resolution"]
        assert [(slider["name"], slider["value"], slider["max"]) for slider in details["mlsd"]["sliders"]] == [
            ("Resolution", 512, 2048), ("MLSD Value Threshold", 0.1, 2.0), ("MLSD Distance Threshold", 0.1, 20.0)]
