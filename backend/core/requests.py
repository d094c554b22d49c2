"""Typed, validated job requests and results. The UI and the REST API build the same objects."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from backend.core import skip_layer_guidance as slg
from backend.core.controlnet_units import MAX_UNITS, ControlNetUnit
from backend.core.errors import UserError
from backend.core.flow_samplers import SHIFT_RANGE
from backend.core.hires_sizes import hires_sizes
from backend.core.image_input import clean_png
from backend.core.options import OPTION_NAMES, OptionError, validate_options
from backend.core.samplers import SamplerError, resolve_sampler

MAX_SEED = 2**32 - 1
SIZE_RANGE = (64, 2048)
STEPS_RANGE = (1, 150)
CFG_RANGE = (1.0, 30.0)
BATCH_SIZE_RANGE = (1, 8)
BATCH_COUNT_RANGE = (1, 100)
CLIP_SKIP_RANGE = (1, 12)
FACE_RESTORERS = ("GFPGAN", "CodeFormer")  # A1111's face_restoration_model choices
SEED_RESIZE_RANGE = (64, 2048)  # "Seed resize from" when set (-1 or 0: off)
DISTILLED_CFG_RANGE = (0.0, 30.0)  # Forge's slider
INTEGER_RANGES = {"steps": STEPS_RANGE, "seed": (-1, MAX_SEED), "batch_size": BATCH_SIZE_RANGE,
                  "n_iter": BATCH_COUNT_RANGE, "clip_skip": CLIP_SKIP_RANGE, "subseed": (-1, MAX_SEED),
                  "eta_noise_seed_delta": (0, MAX_SEED)}
RANDN_SOURCES = ("CPU", "GPU", "NV")  # A1111's "Random number generator source"
TILING_AXES = ("XY", "X", "Y")
HIRES_REFINER_PASSES = ("first pass", "second pass", "both passes")  # A1111's option hires_fix_refiner_pass


class RequestError(UserError):
    """Invalid user input. `field` names the offending request field."""

    def __init__(self, field: str, message: str):
        super().__init__(field, message)


def _check_range(value, low, high):
    if not low <= value <= high:
        raise ValueError(f"must be between {low} and {high}; got {value}")
    return value


def _check_finite_range(value: float, low: float, high: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number between {low} and {high}; got {value}")
    return _check_range(value, low, high)


def _check_face_restorer(value: str) -> str:
    if value not in FACE_RESTORERS:
        raise ValueError(f"must be one of {', '.join(FACE_RESTORERS)}; got {value!r}")
    return value


MAX_PROMPT_CHARACTERS = 20_000
MAX_SCRIPT_IMAGES = BATCH_SIZE_RANGE[1]
# Extension arguments are JSON values; nesting this deep is no argument (and past ~250 levels the job could not
# be recorded: pydantic refuses to serialise it).
MAX_EXTENSION_ARGS_DEPTH = 32
MAX_STYLES = 100  # styles applied to one job
MAX_STYLE_NAME = 200


def _check_nesting(value: Any, limit: int) -> Any:
    """`value` unchanged when its lists and dicts nest at most `limit` deep (iterative: no recursion to exhaust)."""
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, (dict, list, tuple)):
            if depth == limit:
                raise ValueError(f"nested more than {limit} levels deep")
            pending += [(child, depth + 1) for child in (item.values() if isinstance(item, dict) else item)]
    return value


class GenerationRequest(BaseModel):
    """Fields every generation job has. Field names follow A1111's /sdapi/v1 API."""
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")
    # the history keeps no images (the outputs do)
    HISTORY_EXCLUDE: ClassVar[dict] = {"controlnet_units": {"__all__": {"image", "mask"}}}

    # long enough for any real prompt (hundreds of 75-token chunks); a megabyte of text is refused, not encoded
    prompt: str = Field("", max_length=MAX_PROMPT_CHARACTERS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARACTERS)
    sampler_name: str = "DPM++ 2M"
    scheduler: str = "Automatic"
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    seed: int = -1
    batch_size: int = 1
    n_iter: int = Field(1, description="Batch count: how many batches run one after another")
    checkpoint: str | None = Field(None, description="Checkpoint title or name; None uses the selected one")
    save_images: bool = Field(True, description="Write the images to the outputs folder (and the history)")
    sd_vae: str = Field("Automatic", description="Automatic, None (the checkpoint's own) or a file in models/VAE")
    clip_skip: int = Field(1, description="Use the text encoder's output this many layers from the end (1 = last)")
    restore_faces: bool = Field(False, description="Restore faces in the images (A1111's Restore faces)")
    face_restoration_model: str = Field("GFPGAN", description="A1111's option: GFPGAN or CodeFormer")
    code_former_weight: float = Field(0.5, description="A1111's option: CodeFormer weight (0 = strongest effect)")
    distilled_cfg_scale: float = Field(3.5, description="Flux dev's distilled guidance (Forge's Distilled CFG Scale)")
    shift: float = Field(0.0, description="Flow models' (Flux, SD3) timestep shift; 0 keeps the model's own")
    skip_guidance_layers: list[int] = Field(default_factory=list, description="SD3/SD3.5 skip-layer guidance: the "
                                            "transformer layers its extra pass leaves out (empty: off), e.g. 7, 8, 9")
    skip_layer_guidance_scale: float = Field(slg.DEFAULT_SCALE, description="Skip-layer guidance strength")
    skip_layer_guidance_start: float = Field(slg.DEFAULT_START, description="Fraction of the steps it starts at")
    skip_layer_guidance_stop: float = Field(slg.DEFAULT_STOP, description="Fraction of the steps it stops at")
    extension_args: dict[str, Any] = Field(default_factory=dict)
    controlnet_units: list[ControlNetUnit] = Field(default_factory=list, max_length=MAX_UNITS,
                                                   description="The enabled ControlNet units (sd-webui-controlnet's)")
    styles: list[str] = Field(default_factory=list, max_length=MAX_STYLES,
                              description="Names of styles.csv rows, applied to the prompts in this order")

    override_settings: dict[str, Any] = Field(
        default_factory=dict, description="User options (config.json keys) for this job only; keys that are not "
                                          "options are dropped, as A1111 ignores them")
    # what a script sets for a batch of different images (A1111's prompt and seed lists): image i of the job
    image_prompts: list[tuple[str, str]] = Field(
        default_factory=list, max_length=MAX_SCRIPT_IMAGES,
        description="Scripts: (prompt, negative prompt) of each image of the job, instead of the request's")
    image_seeds: list[int] = Field(default_factory=list, max_length=MAX_SCRIPT_IMAGES,
                                   description="Scripts: the seed of each image of the job, instead of seed + index")
    infotext_extra: dict[str, str | int | float] = Field(
        default_factory=dict, max_length=16, description="Scripts: more infotext keys for every image (A1111's "
                                                         "extra_generation_params, e.g. Loopback's)")
    script_name: str | None = Field(None, description="A Script menu script (A1111's lower-case title), or None")
    script_args: list[Any] = Field(default_factory=list, description="The script's arguments, in A1111's order")

    @field_validator("script_args")
    @classmethod
    def _script_args(cls, value: list[Any]) -> list[Any]:
        return _check_nesting(value, MAX_EXTENSION_ARGS_DEPTH)

    @field_validator("override_settings")
    @classmethod
    def _override_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        known = {key: item for key, item in value.items() if key in OPTION_NAMES}
        try:
            validate_options(known)
        except OptionError as error:
            raise ValueError(str(error)) from None
        return known

    @field_validator("image_prompts")
    @classmethod
    def _image_prompts(cls, value: list[tuple[str, str]]) -> list[tuple[str, str]]:
        if any(len(text) > MAX_PROMPT_CHARACTERS for pair in value for text in pair):
            raise ValueError(f"a prompt has at most {MAX_PROMPT_CHARACTERS} characters")
        return value

    @model_validator(mode="after")
    def _image_lists(self):
        for name in ("image_prompts", "image_seeds"):
            given = len(getattr(self, name))
            if given and given != self.batch_size * self.n_iter:
                raise ValueError(f"{name}: {given} entries for {self.batch_size * self.n_iter} images")
        return self

    @field_validator("styles")
    @classmethod
    def _style_names(cls, value: list[str]) -> list[str]:
        if any(len(name) > MAX_STYLE_NAME for name in value):
            raise ValueError(f"a style name has at most {MAX_STYLE_NAME} characters")
        return value
    # A1111's variation seed: each image's noise blended (slerp) towards its variation seed's noise
    subseed: int = Field(-1, description="Variation seed; -1 = random")
    subseed_strength: float = Field(0.0, description="Variation strength: 0 = the seed's image, 1 = the subseed's")
    seed_resize_from_w: int = Field(-1, description="Make the noise as at this width (-1 or 0: off)")
    seed_resize_from_h: int = Field(-1, description="Make the noise as at this height (-1 or 0: off)")
    eta_noise_seed_delta: int = Field(0, description="ENSD: the sampler's later noise is seeded with seed + this")
    randn_source: str = Field("CPU", description="CPU: the same noise on every device; GPU: drawn on the device; "
                                                 "NV: an NVIDIA GPU's noise, made on any device")
    tiling: bool = Field(False, description="Seamless images: the edges continue each other")
    tiling_axes: str = Field("XY", description="Which edges tile: XY (both), X (left/right) or Y (top/bottom)")
    refiner_checkpoint: str | None = Field(None, description="A1111's refiner: the checkpoint that continues")
    refiner_switch_at: float = Field(0.8, description="Fraction of the steps the job's checkpoint samples")
    hires_fix_refiner_pass: str | None = Field(None, description="With the hires fix: the pass the refiner switches "
                                               "in (first pass, second pass, both passes); None: the saved option")

    @field_validator("width", "height")
    @classmethod
    def _size(cls, value: int) -> int:
        _check_range(value, *SIZE_RANGE)
        if value % 8:
            nearest = value // 8 * 8
            raise ValueError(f"must be a multiple of 8; got {value} (nearest: {nearest} or {nearest + 8})")
        return value

    @field_validator("cfg_scale")
    @classmethod
    def _cfg(cls, value: float) -> float:
        return _check_finite_range(value, *CFG_RANGE)

    @field_validator("distilled_cfg_scale")
    @classmethod
    def _distilled_cfg(cls, value: float) -> float:
        return _check_finite_range(value, *DISTILLED_CFG_RANGE)

    @field_validator("shift")
    @classmethod
    def _shift(cls, value: float) -> float:
        return _check_finite_range(value, *SHIFT_RANGE)

    @field_validator("skip_guidance_layers", mode="before")
    @classmethod
    def _skip_layers(cls, value) -> list[int]:
        return slg.parse_layers(value)

    @field_validator("skip_layer_guidance_scale")
    @classmethod
    def _skip_layer_scale(cls, value: float) -> float:
        return _check_finite_range(value, *slg.SCALE_RANGE)

    @field_validator("skip_layer_guidance_start", "skip_layer_guidance_stop")
    @classmethod
    def _skip_layer_fraction(cls, value: float) -> float:
        return _check_finite_range(value, 0.0, 1.0)

    @model_validator(mode="after")
    def _skip_layer_window(self):
        if self.skip_guidance_layers and self.skip_layer_guidance_start >= self.skip_layer_guidance_stop:
            raise ValueError(f"skip_layer_guidance_stop: must be above the start ({self.skip_layer_guidance_start});"
                             f" got {self.skip_layer_guidance_stop}")
        return self

    @field_validator("steps", "seed", "batch_size", "n_iter", "clip_skip", "subseed", "eta_noise_seed_delta")
    @classmethod
    def _in_range(cls, value: int, info: ValidationInfo) -> int:
        return _check_range(value, *INTEGER_RANGES[info.field_name])

    @field_validator("face_restoration_model")
    @classmethod
    def _face_restorer(cls, value: str) -> str:
        return _check_face_restorer(value)

    @field_validator("code_former_weight")
    @classmethod
    def _code_former_weight(cls, value: float) -> float:
        return _check_finite_range(value, 0, 1)

    @field_validator("subseed_strength")
    @classmethod
    def _subseed_strength(cls, value: float) -> float:
        return _check_finite_range(value, 0, 1)

    @field_validator("seed_resize_from_w", "seed_resize_from_h")
    @classmethod
    def _seed_resize(cls, value: int) -> int:
        if value in (-1, 0):
            return value
        if not SEED_RESIZE_RANGE[0] <= value <= SEED_RESIZE_RANGE[1]:
            raise ValueError(f"must be -1 or 0 (off) or between {SEED_RESIZE_RANGE[0]} and {SEED_RESIZE_RANGE[1]}; "
                             f"got {value}")
        return value

    @field_validator("refiner_switch_at")
    @classmethod
    def _switch_at(cls, value: float) -> float:
        return _check_finite_range(value, 0.01, 1.0)

    @field_validator("hires_fix_refiner_pass")
    @classmethod
    def _hires_refiner_pass(cls, value: str | None) -> str | None:
        if value is not None and value not in HIRES_REFINER_PASSES:
            raise ValueError(f"must be one of {', '.join(HIRES_REFINER_PASSES)}; got {value!r}")
        return value

    @field_validator("randn_source")
    @classmethod
    def _randn_source(cls, value: str) -> str:
        if value not in RANDN_SOURCES:
            raise ValueError(f"must be one of {', '.join(RANDN_SOURCES)}; got {value!r}")
        return value

    @field_validator("tiling_axes")
    @classmethod
    def _tiling_axes(cls, value: str) -> str:
        if value not in TILING_AXES:
            raise ValueError(f"must be one of {', '.join(TILING_AXES)}; got {value!r}")
        return value

    @field_validator("extension_args")
    @classmethod
    def _shallow(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_nesting(value, MAX_EXTENSION_ARGS_DEPTH)

    @model_validator(mode="after")
    def _sampler(self, info: ValidationInfo):
        try:  # samplers registered by extensions come in the validation context (see build_request)
            resolve_sampler(self.sampler_name, self.scheduler, (info.context or {}).get("samplers"))
        except SamplerError as error:
            raise ValueError(str(error)) from None
        return self


LATENT_UPSCALE_MODES = {  # A1111's hires-fix latent upscalers: torch interpolation mode, antialias
    "Latent": ("bilinear", False), "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False), "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False), "Latent (nearest-exact)": ("nearest-exact", False),
}
HR_SCALE_RANGE = (1.0, 8.0)
HR_RESIZE_RANGE = (0, SIZE_RANGE[1])  # 0 = derive from the other side (or use hr_scale when both are 0)


class Txt2ImgRequest(GenerationRequest):
    """One txt2img job, optionally with A1111's hires fix: the first pass at width x height is upscaled
    (in latent space or with an image upscaler) and refined by an img2img pass at the final size."""
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_upscaler: str = Field("Latent", description="A latent mode (LATENT_UPSCALE_MODES) or an upscaler name")
    hr_second_pass_steps: int = Field(0, description="Steps of the second pass; 0 = the same as steps")
    denoising_strength: float = Field(0.7, description="How much the second pass changes the upscaled image")
    # A1111 1.6+ hires options: None / "" = the same as the first pass
    hr_checkpoint_name: str | None = Field(None, description="Checkpoint of the second pass")
    hr_sampler_name: str | None = Field(None, description="Sampler of the second pass")
    hr_scheduler: str | None = Field(None, description="Schedule type of the second pass")
    hr_prompt: str = Field("", max_length=MAX_PROMPT_CHARACTERS, description="Prompt of the second pass")
    hr_negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARACTERS)
    hr_cfg: float | None = Field(None, description="CFG scale of the second pass (Forge's Hires CFG Scale)")

    @field_validator("hr_scale")
    @classmethod
    def _hr_scale(cls, value: float) -> float:
        return _check_finite_range(value, *HR_SCALE_RANGE)

    @field_validator("hr_resize_x", "hr_resize_y")
    @classmethod
    def _hr_resize(cls, value: int) -> int:
        _check_range(value, *HR_RESIZE_RANGE)
        if value % 8:
            raise ValueError(f"must be 0 or a multiple of 8; got {value}")
        return value

    @field_validator("hr_second_pass_steps")
    @classmethod
    def _hr_steps(cls, value: int) -> int:
        return _check_range(value, 0, STEPS_RANGE[1])

    @field_validator("denoising_strength")
    @classmethod
    def _hr_strength(cls, value: float) -> float:
        return _check_finite_range(value, 0, 1)

    @field_validator("hr_cfg")
    @classmethod
    def _hr_cfg(cls, value: float | None) -> float | None:
        return None if value is None else _check_finite_range(value, *CFG_RANGE)

    def hires_sampler(self, samplers: dict | None = None) -> tuple[str, str]:
        """(sampler, schedule) of the second pass: the hires choices, each defaulting to the first pass's."""
        return resolve_sampler(self.hr_sampler_name or self.sampler_name, self.hr_scheduler or self.scheduler,
                               samplers)

    @model_validator(mode="after")
    def _hires_sampler(self, info: ValidationInfo):
        if self.hr_sampler_name or self.hr_scheduler:
            try:
                self.hires_sampler((info.context or {}).get("samplers"))
            except SamplerError as error:
                raise ValueError(f"hr_{error}") from None  # "hr_sampler_name: ..." or "hr_scheduler: ..."
        return self

    @model_validator(mode="after")
    def _hires_sizes(self):
        if self.enable_hr:
            hires_sizes(self.width, self.height, self.hr_scale, self.hr_resize_x, self.hr_resize_y)
            steps = self.hr_second_pass_steps or self.steps
            if 0 < self.denoising_strength < 1 and int(steps * self.denoising_strength) < 1:
                raise ValueError(f"denoising_strength: {self.denoising_strength} of {steps} hires steps runs no "
                                 "step; raise the strength or hr_second_pass_steps")
        return self


OUTPAINT_RANGE = (0, 1024)


class Img2ImgRequest(GenerationRequest):
    """One img2img / inpaint / outpaint job. With a mask it inpaints; with outpaint margins it extends
    the canvas and inpaints the new area."""
    HISTORY_EXCLUDE: ClassVar[dict] = {"init_image": True, "extra_init_images": True, "mask": True,  # large; the
                                       **GenerationRequest.HISTORY_EXCLUDE}  # outputs keep them

    init_image: bytes
    extra_init_images: list[bytes] = Field(
        default_factory=list, max_length=BATCH_SIZE_RANGE[1] - 1,
        description="A1111's further init_images: image i of each batch starts from [init_image, *these][i % count]")
    mask: bytes | None = None
    denoising_strength: float = 0.75
    resize_mode: int = Field(0, description="0 Just resize, 1 Crop and resize, 2 Resize and fill")
    mask_blur: int = Field(4, description="Mask blur radius (horizontal, and vertical unless mask_blur_y is set)")
    mask_blur_y: int | None = Field(None, description="A1111's mask_blur_y: a different vertical blur radius")
    inpainting_mask_invert: int = Field(0, description="0 inpaint masked, 1 inpaint not masked")
    inpainting_fill: int = Field(1, description="masked content: 0 fill, 1 original, 2 latent noise, 3 latent nothing")
    inpaint_full_res: bool = Field(False, description="Inpaint area: only masked (True) or whole picture")
    inpaint_full_res_padding: int = 32
    outpaint_left: int = 0
    outpaint_right: int = 0
    outpaint_up: int = 0
    outpaint_down: int = 0

    @field_validator("init_image", "mask")
    @classmethod
    def _image(cls, value: bytes | None) -> bytes | None:
        return None if value is None else clean_png(value)  # decoded, checked and re-encoded once, here

    @field_validator("extra_init_images")
    @classmethod
    def _images(cls, value: list[bytes]) -> list[bytes]:
        return [clean_png(image) for image in value]

    @field_validator("denoising_strength")
    @classmethod
    def _strength(cls, value: float) -> float:
        return _check_finite_range(value, 0, 1)

    @field_validator("resize_mode", "mask_blur", "inpainting_mask_invert", "inpainting_fill",
                     "inpaint_full_res_padding")
    @classmethod
    def _option_range(cls, value: int, info: ValidationInfo) -> int:
        return _check_range(value, *IMG2IMG_RANGES[info.field_name])

    @field_validator("mask_blur_y")
    @classmethod
    def _vertical_blur(cls, value: int | None) -> int | None:
        return None if value is None else _check_range(value, *IMG2IMG_RANGES["mask_blur"])

    @field_validator("outpaint_left", "outpaint_right", "outpaint_up", "outpaint_down")
    @classmethod
    def _outpaint(cls, value: int) -> int:
        _check_range(value, *OUTPAINT_RANGE)
        if value % 8:
            raise ValueError(f"must be a multiple of 8; got {value}")
        return value

    @property
    def outpaints(self) -> bool:
        return any((self.outpaint_left, self.outpaint_right, self.outpaint_up, self.outpaint_down))

    @model_validator(mode="after")
    def _outpaint_size(self):
        width = self.width + self.outpaint_left + self.outpaint_right
        height = self.height + self.outpaint_up + self.outpaint_down
        if self.outpaints and max(width, height) > SIZE_RANGE[1]:
            raise ValueError(f"outpaint: the extended canvas {width}x{height} exceeds {SIZE_RANGE[1]} pixels")
        return self


PNG_INFO_PROPS = ("Prompt", "Negative prompt", "Seed", "CFG scale", "Sampler", "Steps", "Model hash")  # A1111's


class Img2ImgBatchRequest(Img2ImgRequest):
    """A1111's img2img "Batch": every image in a server folder through the same img2img settings, optionally
    inpainted with the mask of the same name from a mask folder, optionally taking prompts/seed/... from each
    image's own infotext ("PNG info"). Results go to `output_dir` under the input's name (or, without one, to the
    usual img2img outputs)."""
    init_image: bytes | None = Field(None, description="Not used: the images come from input_dir")
    input_dir: str = Field(description="A folder on the server whose images are processed")
    output_dir: str = Field("", description="A folder on the server for the results (created if missing); "
                                            "empty: the usual img2img outputs")
    inpaint_mask_dir: str = Field("", description="Masks matched by file name (one file: the mask for all)")
    use_png_info: bool = Field(False, description="Take png_info_props from each image's infotext; prompts "
                                                  "from it are appended to the request's")
    png_info_props: list[str] = Field(default_factory=lambda: list(PNG_INFO_PROPS))

    @field_validator("init_image", "mask")
    @classmethod
    def _image(cls, value: bytes | None) -> None:  # replaces the parent's image check
        if value is not None:
            raise ValueError("a batch takes its images from input_dir (and masks from inpaint_mask_dir)")
        return None

    @field_validator("input_dir", "inpaint_mask_dir")
    @classmethod
    def _folder(cls, value: str) -> str:
        value = value.strip()
        if value and not Path(value).is_dir():
            raise ValueError(f"not a folder on the server: {value}")
        return value

    @field_validator("output_dir")
    @classmethod
    def _output_folder(cls, value: str) -> str:
        value = value.strip()
        if value and Path(value).exists() and not Path(value).is_dir():
            raise ValueError(f"not a folder: {value}")
        return value

    @field_validator("png_info_props")
    @classmethod
    def _props(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in PNG_INFO_PROPS]
        if unknown:
            raise ValueError(f"unknown {unknown}; choose from {', '.join(PNG_INFO_PROPS)}")
        return value


IMG2IMG_RANGES = {"resize_mode": (0, 2), "mask_blur": (0, 64), "inpainting_mask_invert": (0, 1),
                  "inpainting_fill": (0, 3), "inpaint_full_res_padding": (0, 256)}


EXTRAS_SCALE_MAX = 8.0  # A1111's "Resize" slider goes to 8
EXTRAS_SIZE_MAX = 8192  # A1111's "Width"/"Height" sliders go to 8192; Settings.max_upscale_size may lower it
EXTRAS_MAX_IMAGES = 1000


class ExtrasRequest(BaseModel):
    """One upscale ("Extras") job over one image, several images, or every image in a server folder.
    Field names follow A1111's extra-single-image / extra-batch-images API."""
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")
    HISTORY_EXCLUDE: ClassVar[set[str]] = {"images"}

    images: list[bytes] = Field(default_factory=list, description="Encoded images (PNG, JPEG, WEBP, ...)")
    input_dir: str | None = Field(None, description="A folder on the server whose images are upscaled")
    resize_mode: int = Field(0, description="0 scale by upscaling_resize, 1 to upscaling_resize_w x _h")
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = Field(True, description="Mode 1: crop to exactly the target size (else keep the "
                                                   "aspect ratio, covering the target)")
    upscaler_1: str = "Lanczos"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0.0
    gfpgan_visibility: float = Field(0.0, description="Restore faces with GFPGAN, blended by this much (0 = off)")
    codeformer_visibility: float = Field(0.0, description="Restore faces with CodeFormer, blended by this much")
    codeformer_weight: float = Field(0.0, description="CodeFormer weight (0 = strongest effect)")
    save_images: bool = True

    @field_validator("images")
    @classmethod
    def _images(cls, value: list[bytes]) -> list[bytes]:
        if len(value) > EXTRAS_MAX_IMAGES:
            raise ValueError(f"at most {EXTRAS_MAX_IMAGES} images per job; got {len(value)}")
        cleaned = []
        for position, data in enumerate(value):
            try:
                cleaned.append(clean_png(data, keep_infotext=True))  # decoded, checked, re-encoded once
            except ValueError as error:
                raise ValueError(f"image {position + 1}: {error}") from None
        return cleaned

    @field_validator("input_dir")
    @classmethod
    def _input_dir(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_dir():
            raise ValueError(f"not a folder on the server: {value}")
        return value

    @field_validator("resize_mode")
    @classmethod
    def _resize_mode(cls, value: int) -> int:
        return _check_range(value, 0, 1)

    @field_validator("upscaling_resize")
    @classmethod
    def _scale(cls, value: float) -> float:
        if not math.isfinite(value) or not 0 < value <= EXTRAS_SCALE_MAX:
            raise ValueError(f"must be greater than 0 and at most {EXTRAS_SCALE_MAX:g}; got {value}")
        return value

    @field_validator("upscaling_resize_w", "upscaling_resize_h")
    @classmethod
    def _target(cls, value: int) -> int:
        return _check_range(value, 1, EXTRAS_SIZE_MAX)

    @field_validator("extras_upscaler_2_visibility", "gfpgan_visibility", "codeformer_visibility", "codeformer_weight")
    @classmethod
    def _visibility(cls, value: float) -> float:
        return _check_finite_range(value, 0, 1)

    @property
    def restores_faces(self) -> bool:
        return self.gfpgan_visibility > 0 or self.codeformer_visibility > 0

    @property
    def upscales(self) -> bool:
        return self.upscaler_1 != "None"

    @model_validator(mode="after")
    def _one_source(self):
        if bool(self.images) == bool(self.input_dir):
            raise ValueError("images: give either images or input_dir (a server folder), not both or neither")
        return self


def build_request(request_class: type[BaseModel], values: dict[str, Any], samplers: dict | None = None):
    """Build a request, turning pydantic's errors into one RequestError that names the field. `samplers`: the
    samplers extensions registered, accepted besides the built-in ones."""
    try:
        return request_class.model_validate(values, context={"samplers": samplers} if samplers else None)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "request"
        message = first["msg"].removeprefix("Value error, ")
        if ": " in message and not first["loc"]:
            field, message = message.split(": ", 1)
        raise RequestError(field, message) from None


class ImageResult(BaseModel):
    """One generated image: plain data, so results can cross process boundaries."""
    model_config = ConfigDict(frozen=True)

    png: bytes  # encoded once, infotext included; the saved file holds the same bytes
    path: str | None  # None when the request asked not to save
    seed: int  # upscaled images: the source's seed when its infotext has one, else -1
    subseed: int = -1  # the variation seed of the image's noise (-1: none)
    prompt: str
    negative_prompt: str
    infotext: str  # A1111's "parameters" (upscaled images: the source's, kept; "" when it had none)
    postprocessing: str = ""  # upscaled images: what the upscale did ("Postprocess upscaler: ...")
    is_grid: bool = False  # a grid of the job's other images (A1111's return_grid), shown first


class GenerationResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    images: list[ImageResult]
    interrupted: bool = False
    model_label: str = ""  # e.g. "SD1.x inpainting"
    warnings: list[str] = Field(default_factory=list)  # what was ignored (unknown LoRA, unbalanced bracket, ...)
    detected_maps: list[bytes] = Field(default_factory=list)  # ControlNet units' maps (PNG), shown after the images
    grid: ImageResult | None = None  # the grid of a job's several images (A1111's return_grid), shown first

    @property
    def shown_images(self) -> list[ImageResult]:
        """What the gallery shows and the API returns: the grid (when there is one), then the images."""
        return [self.grid, *self.images] if self.grid else list(self.images)


# what the job queue runs: one request type per kind
JobRequest = Txt2ImgRequest | Img2ImgRequest | Img2ImgBatchRequest | ExtrasRequest
