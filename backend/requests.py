"""Typed, validated job requests and results. The UI and the REST API build the same objects."""
from __future__ import annotations

import io
import math
from typing import Any, ClassVar

from PIL import Image, UnidentifiedImageError

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from backend.samplers import SamplerError, resolve_sampler

MAX_SEED = 2**32 - 1
SIZE_RANGE = (64, 2048)
STEPS_RANGE = (1, 150)
CFG_RANGE = (1.0, 30.0)
BATCH_SIZE_RANGE = (1, 8)
BATCH_COUNT_RANGE = (1, 100)
INTEGER_RANGES = {"steps": STEPS_RANGE, "seed": (-1, MAX_SEED), "batch_size": BATCH_SIZE_RANGE,
                  "n_iter": BATCH_COUNT_RANGE}


class RequestError(ValueError):
    """Invalid user input. `field` names the offending request field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def _check_range(value, low, high):
    if not low <= value <= high:
        raise ValueError(f"must be between {low} and {high}; got {value}")
    return value


def _check_finite_range(value: float, low: float, high: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number between {low} and {high}; got {value}")
    return _check_range(value, low, high)


class GenerationRequest(BaseModel):
    """Fields every generation job has. Field names follow A1111's /sdapi/v1 API."""
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")

    prompt: str = ""
    negative_prompt: str = ""
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
    extension_args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("width", "height")
    @classmethod
    def _size(cls, value: int) -> int:
        _check_range(value, *SIZE_RANGE)
        if value % 8:
            raise ValueError(f"must be a multiple of 8; got {value} (nearest: {value // 8 * 8} or {value // 8 * 8 + 8})")
        return value

    @field_validator("cfg_scale")
    @classmethod
    def _cfg(cls, value: float) -> float:
        return _check_finite_range(value, *CFG_RANGE)

    @field_validator("steps", "seed", "batch_size", "n_iter")
    @classmethod
    def _in_range(cls, value: int, info: ValidationInfo) -> int:
        return _check_range(value, *INTEGER_RANGES[info.field_name])

    @model_validator(mode="after")
    def _sampler(self):
        try:
            resolve_sampler(self.sampler_name, self.scheduler)
        except SamplerError as error:
            raise ValueError(str(error)) from None
        return self


class Txt2ImgRequest(GenerationRequest):
    """One txt2img job."""


IMAGE_FORMATS = {"PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"}
OUTPAINT_RANGE = (0, 1024)


def decode_image_bytes(data: bytes) -> Image.Image:
    """Decode and fully load an uploaded raster image; ValueError with a user message otherwise."""
    try:
        image = Image.open(io.BytesIO(data))
        if image.format not in IMAGE_FORMATS:
            raise ValueError(f"must be a PNG, JPEG or WEBP image; got {image.format}")
        image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"must be a PNG, JPEG or WEBP image ({type(error).__name__})") from None
    return image


class Img2ImgRequest(GenerationRequest):
    """One img2img / inpaint / outpaint job. With a mask it inpaints; with outpaint margins it extends
    the canvas and inpaints the new area."""
    HISTORY_EXCLUDE: ClassVar[set[str]] = {"init_image", "mask"}  # the images are large; the outputs keep them

    init_image: bytes
    mask: bytes | None = None
    denoising_strength: float = 0.75
    resize_mode: int = Field(0, description="0 Just resize, 1 Crop and resize, 2 Resize and fill")
    mask_blur: int = 4
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
        if value is not None:
            decode_image_bytes(value)
        return value

    @field_validator("denoising_strength")
    @classmethod
    def _strength(cls, value: float) -> float:
        return _check_finite_range(value, 0, 1)

    @field_validator("resize_mode", "mask_blur", "inpainting_mask_invert", "inpainting_fill",
                     "inpaint_full_res_padding")
    @classmethod
    def _option_range(cls, value: int, info: ValidationInfo) -> int:
        return _check_range(value, *IMG2IMG_RANGES[info.field_name])

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


IMG2IMG_RANGES = {"resize_mode": (0, 2), "mask_blur": (0, 64), "inpainting_mask_invert": (0, 1),
                  "inpainting_fill": (0, 3), "inpaint_full_res_padding": (0, 256)}


def build_request(request_class: type[BaseModel], values: dict[str, Any]):
    """Build a request, turning pydantic's errors into one RequestError that names the field."""
    try:
        return request_class(**values)
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
    seed: int
    prompt: str
    negative_prompt: str
    infotext: str


class GenerationResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    images: list[ImageResult]
    interrupted: bool = False
    model_label: str = ""  # e.g. "SD1.x inpainting"
