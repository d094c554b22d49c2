"""The preprocessors that need no weights, with sd-webui-controlnet's names, labels, sliders and defaults, so that
API clients and infotexts written for the extension mean the same here.

Each takes an RGB uint8 array (H, W, 3) and returns the detected map as RGB uint8 (inpaint ones: RGBA, the mask in
alpha). `resolution` and the thresholds arrive already resolved (`resolve_parameters`): the extension replaces a
value outside a slider's range by its default (clients send -1 for "default", and webuiapi sends 64 for sliders a
module does not have), so we do the same rather than refuse them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from backend.core.errors import UserError


@dataclass(frozen=True)
class Slider:
    """One preprocessor parameter as the extension describes it (its UI slider and /controlnet/module_list)."""

    label: str = "EMPTY_LABEL"
    minimum: float = 0.0
    maximum: float = 1.0
    step: float = 0.01
    value: float = 0.5
    visible: bool = True

    def resolve(self, requested: float | None) -> float:
        if requested is None or not self.minimum <= requested <= self.maximum:
            return self.value
        return requested

    def api_json(self) -> dict:
        return {"name": self.label, "value": self.value, "min": self.minimum, "max": self.maximum, "step": self.step}


HIDDEN = Slider(visible=False)
RESOLUTION = Slider(label="Resolution", minimum=64, maximum=2048, value=512, step=8)
HIDDEN_RESOLUTION = Slider(label="Resolution", minimum=64, maximum=2048, value=512, step=8, visible=False)


@dataclass(frozen=True)
class Detection:
    """What a preprocessor found: the map, and for openpose the poses in openpose's JSON format (the extension's
    /controlnet/detect answers them as "poses", for its pose editor and API clients)."""

    pixels: np.ndarray
    poses: dict | None = None


@dataclass(frozen=True)
class Preprocessor:
    name: str
    run: Callable[..., np.ndarray | Detection]  # the map (a Detection where there is more than the map)
    label: str = ""
    resolution: Slider = RESOLUTION
    slider_1: Slider = HIDDEN
    slider_2: Slider = HIDDEN
    tags: tuple[str, ...] = ()
    priority: int = 0  # higher is listed first, as in the extension's dropdown
    accepts_mask: bool = False
    uses_noise: bool = False  # shuffle: its output depends on the seed
    needs_files: tuple[str, ...] = field(default=())

    @property
    def public_name(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class ResolvedParameters:
    resolution: int
    threshold_a: float
    threshold_b: float


def resolve_parameters(preprocessor: Preprocessor, processor_res: float | None, threshold_a: float | None,
                       threshold_b: float | None) -> ResolvedParameters:
    return ResolvedParameters(int(preprocessor.resolution.resolve(processor_res)),
                              preprocessor.slider_1.resolve(threshold_a), preprocessor.slider_2.resolve(threshold_b))


def as_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1), RGB or RGBA uint8 as RGB; alpha composited on white (the extension's HWC3)."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        return np.concatenate([image] * 3, axis=2)
    if image.shape[2] == 4:
        alpha = image[:, :, 3:4].astype(np.float32) / 255.0
        return (image[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).astype(np.uint8)
    return image


def resize_short_side(image: np.ndarray, resolution: int) -> np.ndarray:
    """The image scaled so that its short side is `resolution` (the extension's resize_image_with_pad; its pad to a
    multiple of 64 is taken off again before anything is returned, so only the edge behaviour of the filters
    could differ, and the filters here pad their borders themselves)."""
    height, width = image.shape[:2]
    scale = float(resolution) / float(min(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size == (width, height):
        return image
    return cv2.resize(image, size, interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)


def scaled_and_padded(image: np.ndarray, resolution: int) -> tuple[np.ndarray, int, int]:
    """The image scaled to `resolution` on its short side and edge-padded to multiples of 64, with the scaled
    height and width (what is kept of the map)."""
    scaled = resize_short_side(image, resolution)
    height, width = scaled.shape[:2]
    padded = np.pad(scaled, [[0, -height % 64], [0, -width % 64], [0, 0]], mode="edge")
    return np.ascontiguousarray(padded), height, width


def gray_as_rgb(gray: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.stack([gray] * 3, axis=2))


def run_none(image, **_):
    return image


def run_canny(image, resolution, threshold_a, threshold_b, **_):
    return gray_as_rgb(cv2.Canny(resize_short_side(image, resolution), int(threshold_a), int(threshold_b)))


def run_invert(image, **_):
    return 255 - image


def run_threshold(image, resolution, threshold_a, **_):
    image = resize_short_side(image, resolution)
    return gray_as_rgb(np.where(image.min(axis=2) > threshold_a, 255, 0).astype(np.uint8))


def run_scribble_xdog(image, resolution, threshold_a, **_):
    image = resize_short_side(image, resolution).astype(np.float32)
    difference = cv2.GaussianBlur(image, (0, 0), 5.0) - cv2.GaussianBlur(image, (0, 0), 0.5)
    dog = (255 - difference.min(axis=2)).clip(0, 255).astype(np.uint8)
    return gray_as_rgb(np.where(2 * (255 - dog.astype(np.int32)) > threshold_a, 255, 0).astype(np.uint8))


def run_lineart_standard(image, resolution, **_):
    pixels = resize_short_side(image, resolution).astype(np.float32)
    intensity = (cv2.GaussianBlur(pixels, (0, 0), 6.0) - pixels).min(axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    intensity /= max(16.0, float(np.median(strong)) if strong.size else 0.0)
    return gray_as_rgb((intensity * 127).clip(0, 255).astype(np.uint8))


def run_tile_resample(image, threshold_a, **_):
    if threshold_a < 1.1:
        return image
    height, width = image.shape[:2]
    size = (max(1, int(width / threshold_a)), max(1, int(height / threshold_a)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def run_blur_gaussian(image, resolution, threshold_a, **_):
    return cv2.GaussianBlur(resize_short_side(image, resolution), (0, 0), float(threshold_a))


def run_inpaint(image, mask=None, **_):
    """The image with the area to repaint in alpha (255 = repaint), which the control image turns into -1."""
    if mask is None:
        mask = np.zeros(image.shape[:2], dtype=np.uint8)
    elif mask.shape[:2] != image.shape[:2]:
        mask = cv2.resize(mask, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
    alpha = np.where(mask > 127, 255, 0).astype(np.uint8)
    return np.ascontiguousarray(np.concatenate([image, alpha[:, :, None]], axis=2))


def smooth_noise(height: int, width: int, cell: int, rng: np.random.Generator) -> np.ndarray:
    """Noise in [0, 1] varying over about `cell` pixels (the extension's make_noise_disk)."""
    noise = rng.uniform(0, 1, size=(height // cell + 2, width // cell + 2))
    noise = cv2.resize(noise, (width + 2 * cell, height + 2 * cell), interpolation=cv2.INTER_CUBIC)
    noise = noise[cell:cell + height, cell:cell + width]
    noise = noise - noise.min()
    return noise / max(float(noise.max()), 1e-12)


def run_shuffle(image, resolution, seed=0, **_):
    """The content moved along a smooth random flow (seeded by the job's seed, as the extension does)."""
    image = resize_short_side(image, resolution)
    height, width = image.shape[:2]
    rng = np.random.default_rng(seed)
    flow_x = smooth_noise(height, width, 256, rng) * float(width - 1)
    flow_y = smooth_noise(height, width, 256, rng) * float(height - 1)
    return cv2.remap(image, flow_x.astype(np.float32), flow_y.astype(np.float32), cv2.INTER_LINEAR)


def recolor(channel_of: Callable[[np.ndarray], np.ndarray]):
    def run(image, threshold_a, **_):
        channel = channel_of(image).astype(np.float32) / 255.0
        return gray_as_rgb((channel ** threshold_a * 255.0).clip(0, 255).astype(np.uint8))
    return run


# The extension converts with the BGR constants on RGB pixels; kept so that maps match its output.
run_recolor_luminance = recolor(lambda image: cv2.cvtColor(image, cv2.COLOR_BGR2LAB)[:, :, 0])
run_recolor_intensity = recolor(lambda image: cv2.cvtColor(image, cv2.COLOR_BGR2HSV)[:, :, 2])

GAMMA = Slider(label="Gamma Correction", value=1.0, minimum=0.1, maximum=2.0, step=0.001)
VARIATION = Slider(label="Variation", value=8.0, minimum=3.0, maximum=32.0, step=1.0)

WEIGHT_FREE = (
    Preprocessor("none", run_none, resolution=HIDDEN_RESOLUTION, tags=("InstructP2P",), priority=10),
    Preprocessor("canny", run_canny, tags=("Canny",), priority=100,
                 slider_1=Slider(label="Low Threshold", minimum=1, maximum=255, step=1, value=100),
                 slider_2=Slider(label="High Threshold", minimum=1, maximum=255, step=1, value=200)),
    Preprocessor("invert", run_invert, label="invert (from white bg & black line)", resolution=HIDDEN_RESOLUTION,
                 tags=("Canny", "Lineart", "Scribble", "MLSD"), priority=20),
    Preprocessor("threshold", run_threshold,
                 slider_1=Slider(label="Binarization Threshold", minimum=0, maximum=255, step=1, value=127)),
    Preprocessor("scribble_xdog", run_scribble_xdog, tags=("Scribble", "SparseCtrl"),
                 slider_1=Slider(label="XDoG Threshold", minimum=1, maximum=64, value=32)),
    Preprocessor("lineart_standard", run_lineart_standard, label="lineart_standard (from white bg & black line)",
                 tags=("Lineart",), priority=100),
    Preprocessor("tile_resample", run_tile_resample, resolution=HIDDEN, tags=("Tile",), priority=100,
                 slider_1=Slider(label="Down Sampling Rate", value=1.0, minimum=1.0, maximum=8.0, step=0.01)),
    # tile_colorfix keeps the image; its colour fix acts on the sampling, not on the map.
    Preprocessor("tile_colorfix", run_none, resolution=HIDDEN, tags=("Tile",), slider_1=VARIATION),
    Preprocessor("tile_colorfix+sharp", run_none, resolution=HIDDEN, tags=("Tile",), slider_1=VARIATION,
                 slider_2=Slider(label="Sharpness", value=1.0, minimum=0.0, maximum=2.0, step=0.01)),
    Preprocessor("blur_gaussian", run_blur_gaussian, tags=("Tile",),
                 slider_1=Slider(label="Sigma", minimum=0.01, maximum=64.0, value=9.0)),
    Preprocessor("inpaint_only", run_inpaint, resolution=HIDDEN_RESOLUTION, tags=("Inpaint",), priority=100,
                 accepts_mask=True),
    Preprocessor("inpaint", run_inpaint, label="inpaint_global_harmonious", resolution=HIDDEN_RESOLUTION,
                 tags=("Inpaint",), accepts_mask=True),
    Preprocessor("shuffle", run_shuffle, resolution=HIDDEN_RESOLUTION, tags=("Shuffle",), uses_noise=True),
    Preprocessor("recolor_luminance", run_recolor_luminance, resolution=HIDDEN, slider_1=GAMMA, tags=("Recolor",),
                 priority=100),
    Preprocessor("recolor_intensity", run_recolor_intensity, resolution=HIDDEN, slider_1=GAMMA, tags=("Recolor",)),
    # IP-Adapter: the image goes to a CLIP vision encoder as it is (the map shown is the image itself)
    *(Preprocessor(name, run_none, resolution=HIDDEN_RESOLUTION, tags=("IP-Adapter",), priority=priority)
      for name, priority in (("ip-adapter-auto", 100), ("ip-adapter_clip_h", 0), ("ip-adapter_clip_g", 0),
                             ("ip-adapter_clip_sd15", 0), ("ip-adapter_clip_sdxl", 0),
                             ("ip-adapter_clip_sdxl_plus_vith", 0))),
)


class UnknownPreprocessor(UserError):
    def __init__(self, field: str, module: str, known: list[str]):
        super().__init__(field, f"unknown preprocessor '{module}'; one of: {', '.join(known)}")
        self.module = module


def run_detection(preprocessor: Preprocessor, image: np.ndarray, parameters: ResolvedParameters,
                  mask: np.ndarray | None = None, seed: int = 0) -> Detection:
    """What `preprocessor` finds in `image` (any of gray/RGB/RGBA uint8): the map as RGB uint8 (RGBA for inpaint),
    and the poses where it finds poses."""
    found = preprocessor.run(as_rgb(np.asarray(image, dtype=np.uint8)), resolution=parameters.resolution,
                             threshold_a=parameters.threshold_a, threshold_b=parameters.threshold_b,
                             mask=mask, seed=seed)
    return found if isinstance(found, Detection) else Detection(found)


def run_preprocessor(preprocessor: Preprocessor, image: np.ndarray, parameters: ResolvedParameters,
                     mask: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """The detected map of `image` (any of gray/RGB/RGBA uint8) as RGB uint8 (RGBA for inpaint)."""
    return run_detection(preprocessor, image, parameters, mask=mask, seed=seed).pixels
