"""ControlNet preprocessors without weights (sd-webui-controlnet's names, sliders and defaults), the ones needing
weights refused with the file they need, and fitting maps to the generation size (resize modes, pixel perfect)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from backend.controlnet.catalog import PreprocessorCatalog
from backend.controlnet.control_map import fit_map, pixel_perfect_resolution
from backend.controlnet.preprocessors import resolve_parameters, run_preprocessor
from backend.core.control_modes import ResizeMode, parse_control_mode, parse_resize_mode
from backend.core.errors import UserError

WEIGHT_FREE_NAMES = ["none", "canny", "invert", "threshold", "scribble_xdog", "lineart_standard", "tile_resample",
                     "tile_colorfix", "tile_colorfix+sharp", "blur_gaussian", "inpaint_only",
                     "inpaint_global_harmonious", "shuffle", "recolor_luminance", "recolor_intensity"]

SCALED_TO_RESOLUTION = {"canny", "threshold", "scribble_xdog", "lineart_standard", "blur_gaussian", "shuffle"}


@pytest.fixture
def catalog(tmp_path):
    return PreprocessorCatalog(tmp_path / "ControlNetPreprocessor")


def circle_image(width=96, height=64, centre=(48, 32), radius=20) -> np.ndarray:
    """A black circle outline-free disc on white."""
    image = np.full((height, width, 3), 255, np.uint8)
    cv2.circle(image, centre, radius, (0, 0, 0), thickness=-1)
    return image


def detect(catalog, module, image, processor_res=None, threshold_a=None, threshold_b=None, **kwargs):
    preprocessor = catalog.get(module)
    return run_preprocessor(preprocessor, image, resolve_parameters(preprocessor, processor_res, threshold_a,
                                                                    threshold_b), **kwargs)


@pytest.mark.parametrize("module", WEIGHT_FREE_NAMES)
def test_every_weight_free_preprocessor_runs_and_keeps_the_aspect(catalog, module):
    image = circle_image()
    detected = detect(catalog, module, image, processor_res=128)
    assert detected.dtype == np.uint8
    assert detected.shape[2] == (4 if module.startswith("inpaint") else 3)
    height, width = detected.shape[:2]
    assert abs(width / height - 1.5) < 0.05
    if module in SCALED_TO_RESOLUTION:
        assert min(height, width) == 128
    else:
        assert (height, width) == (64, 96)


def test_canny_finds_the_edges_of_a_drawn_circle_and_nothing_else(catalog):
    detected = detect(catalog, "canny", circle_image(), processor_res=64)
    edges = detected[:, :, 0] > 0
    ys, xs = np.nonzero(edges)
    distance = np.hypot(xs - 48, ys - 32)
    assert edges.sum() > 60
    assert np.all(np.abs(distance - 20) <= 2.5), "every edge pixel lies on the circle's outline"
    assert not edges[32, 48] and not edges[5, 5]  # neither the inside nor the background


def test_canny_thresholds_are_threshold_a_and_b(catalog):
    soft = np.full((64, 64, 3), 255, np.uint8)
    soft[:, 32:] = 215  # a faint step: its gradient is between the two threshold pairs below
    assert detect(catalog, "canny", soft, 64, 10, 20).any()
    assert not detect(catalog, "canny", soft, 64, 200, 250).any()


def test_invert_and_threshold_are_exact(catalog):
    image = np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    assert np.array_equal(detect(catalog, "invert", image), 255 - image)
    binary = detect(catalog, "threshold", image, processor_res=64, threshold_a=100)
    assert np.array_equal(binary[:, :, 0], np.where(image.min(axis=2) > 100, 255, 0))
    assert set(np.unique(binary)) <= {0, 255}


def test_out_of_range_parameters_take_the_extensions_defaults(catalog):
    canny = catalog.get("canny")
    assert resolve_parameters(canny, -1, -1, -1) == resolve_parameters(canny, None, None, None)
    assert resolve_parameters(canny, -1, -1, -1).__dict__ == {"resolution": 512, "threshold_a": 100,
                                                              "threshold_b": 200}
    assert resolve_parameters(canny, 256, 50, 300).__dict__ == {"resolution": 256, "threshold_a": 50,
                                                                "threshold_b": 200}
    assert resolve_parameters(catalog.get("threshold"), 64, 64, 64).threshold_a == 64
    assert resolve_parameters(catalog.get("scribble_xdog"), 512, 100, 0).threshold_a == 32


def test_labels_and_internal_names_both_work(catalog):
    assert catalog.get("inpaint_global_harmonious") is catalog.get("inpaint")
    assert catalog.get("invert (from white bg & black line)") is catalog.get("invert")
    assert catalog.get(None).name == "none"
    names = catalog.public_names()
    assert names[0] == "none" and set(WEIGHT_FREE_NAMES) - {"invert", "lineart_standard"} <= set(names)
    assert "depth_midas" in names and "openpose_full" in names


def test_scribble_and_lineart_mark_the_drawn_lines(catalog):
    drawing = np.full((64, 64, 3), 255, np.uint8)
    cv2.line(drawing, (10, 32), (54, 32), (0, 0, 0), 2)
    for module in ("scribble_xdog", "lineart_standard"):
        detected = detect(catalog, module, drawing, processor_res=64)[:, :, 0]
        assert detected[31:34, 20:44].max() > 100, module
        assert detected[:10].max() == 0 and detected[-10:].max() == 0, module


def test_inpaint_puts_the_mask_in_alpha(catalog):
    mask = np.zeros((64, 96), np.uint8)
    mask[10:20, 30:40] = 255
    detected = detect(catalog, "inpaint_only", circle_image(), mask=mask)
    assert np.array_equal(detected[:, :, 3], mask)
    assert np.array_equal(detected[:, :, :3], circle_image())


def test_shuffle_follows_the_seed(catalog):
    image = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    first = detect(catalog, "shuffle", image, seed=1)
    assert np.array_equal(first, detect(catalog, "shuffle", image, seed=1))
    assert not np.array_equal(first, detect(catalog, "shuffle", image, seed=2))


def test_tile_resample_and_recolor(catalog):
    image = circle_image()
    assert detect(catalog, "tile_resample", image, threshold_a=2.0).shape == (32, 48, 3)
    gray = detect(catalog, "recolor_luminance", image)
    assert np.array_equal(gray[:, :, 0], gray[:, :, 2]) and gray[32, 48, 0] == 0 and gray[0, 0, 0] == 255


@pytest.mark.parametrize("module, file", [("densepose (pruple bg & purple torso)",
                                           "densepose/densepose_r50_fpn_dl.torchscript"),
                                          ("densepose", "densepose/densepose_r50_fpn_dl.torchscript"),
                                          ("normal_dsine", "normal_dsine/dsine.pt"),
                                          ("depth_zoe", "zoedepth/ZoeD_M12_N.pt")])
def test_a_preprocessor_needing_weights_is_refused_naming_the_file(catalog, module, file):
    with pytest.raises(UserError) as refused:
        catalog.get(module, field="controlnet.args[0].module")
    assert refused.value.status == 422 and refused.value.field == "controlnet.args[0].module"
    assert str(catalog.weights_dir / file) in refused.value.message
    assert file in catalog.needed_files()[catalog.by_name()[module].public_name]
    (catalog.weights_dir / file).parent.mkdir(parents=True)
    (catalog.weights_dir / file).write_bytes(b"weights")
    with pytest.raises(UserError) as refused:  # installed, but its network is not built in yet
        catalog.get(module)
    assert str(catalog.weights_dir / file) not in refused.value.message


def test_an_unknown_preprocessor_lists_the_known_ones(catalog):
    with pytest.raises(UserError, match="unknown preprocessor 'cany'.*canny"):
        catalog.get("cany")


def test_pixel_perfect_matches_the_extensions_formula():
    # a 300x200 (WxH) image for a 768x512 target: both scales 2.56 -> short side 512
    assert pixel_perfect_resolution(200, 300, 512, 768, ResizeMode.CROP_AND_RESIZE) == 512
    # a square image for a 768x512 target: cover takes the larger scale, fill the smaller
    assert pixel_perfect_resolution(100, 100, 512, 768, ResizeMode.CROP_AND_RESIZE) == 768
    assert pixel_perfect_resolution(100, 100, 512, 768, ResizeMode.RESIZE_AND_FILL) == 512
    assert pixel_perfect_resolution(100, 100, 512, 768, ResizeMode.JUST_RESIZE) == 768


def test_resize_modes_fit_the_map():
    square = np.zeros((64, 64, 3), np.uint8)
    square[:, :32] = 255  # left half white
    stretched = fit_map(square, ResizeMode.JUST_RESIZE, 128, 64)
    assert stretched.shape == (64, 128, 3) and stretched[:, :60].min() == 255 and stretched[:, 68:].max() == 0
    cropped = fit_map(square, ResizeMode.CROP_AND_RESIZE, 128, 64)  # scaled x2, centre 64 rows kept
    assert cropped.shape == (64, 128, 3) and cropped[:, :60].min() == 255 and cropped[:, 68:].max() == 0
    tall = fit_map(square, ResizeMode.CROP_AND_RESIZE, 32, 64)  # scaled to 64x64, middle 32 columns kept
    assert tall.shape == (64, 32, 3) and tall[:, :14].min() == 255 and tall[:, 18:].max() == 0
    filled = fit_map(np.full((64, 64, 3), 200, np.uint8), ResizeMode.RESIZE_AND_FILL, 128, 64)
    assert filled.shape == (64, 128, 3) and filled.min() == 200 == filled.max()  # padded with the border colour


def test_binary_maps_stay_binary_when_scaled():
    edges = np.zeros((50, 50, 3), np.uint8)
    cv2.circle(edges, (25, 25), 15, (255, 255, 255), 1)
    scaled = fit_map(edges, ResizeMode.JUST_RESIZE, 80, 80)
    assert set(np.unique(scaled)) == {0, 255}


def test_modes_parse_names_ints_and_aliases():
    assert parse_resize_mode(0) == ResizeMode.JUST_RESIZE
    assert parse_resize_mode("Inner Fit (Scale to Fit)") == ResizeMode.CROP_AND_RESIZE
    assert parse_resize_mode("Resize and Fill") == ResizeMode.RESIZE_AND_FILL
    assert parse_control_mode(2).value == "ControlNet is more important"
    assert parse_control_mode("My prompt is more important") == parse_control_mode(1)
    with pytest.raises(UserError, match="control_mode"):
        parse_control_mode(7)
