"""Request and response bodies of the A1111-compatible REST API (/sdapi/v1), with A1111's field names
and defaults. Fields we accept for compatibility but cannot honour yet are refused with 422 when set ("not
supported by this version"), never silently ignored."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from backend.core import skip_layer_guidance as slg


class GenerationBody(BaseModel):
    """Fields txt2img and img2img bodies share. Unknown keys are ignored, as A1111 does."""
    model_config = ConfigDict(extra="ignore")

    prompt: str = ""
    negative_prompt: str | None = ""
    styles: list[str] | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    sampler_index: str = "Euler"  # A1111's older field: used when sampler_name is not given
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0  # Flux: unset means 1 (its guidance is distilled; see distilled_cfg_scale)
    distilled_cfg_scale: float = 3.5  # Forge's field: Flux dev's distilled guidance
    shift: float = 0.0  # flow models' timestep shift; 0 keeps the model's own
    # SD3.5 skip-layer guidance, with diffusers' names (layers: a list or "7, 8, 9"; empty: off)
    skip_guidance_layers: list[int] | str | None = None
    skip_layer_guidance_scale: float = slg.DEFAULT_SCALE
    skip_layer_guidance_start: float = slg.DEFAULT_START
    skip_layer_guidance_stop: float = slg.DEFAULT_STOP
    width: int = 512
    height: int = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None  # A1111: None with a refiner is its UI default, 0.8
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    extension_args: dict[str, Any] = Field(default_factory=dict, description="{extension: {argument: value}}: "
                                           "the values of extensions' form sections (A1111: alwayson_scripts)")
    send_images: bool = True
    save_images: bool = False
    force_task_id: str | None = None


# What A1111 clients send for "no separate hires setting" (its UI's dropdown values, or empty).
HIRES_SAME = {None, "", "Use same checkpoint", "Use same sampler", "Use same scheduler"}


class Txt2ImgBody(GenerationBody):
    """POST /sdapi/v1/txt2img, with A1111's hires fix fields and API defaults."""
    enable_hr: bool = False
    denoising_strength: float = 0.75  # A1111's API default (its UI starts at 0.7)
    hr_scale: float = 2.0
    hr_upscaler: str | None = None  # None = "Latent", as A1111
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    hr_cfg: float | None = None  # Forge's Hires CFG Scale; absent: the first pass's cfg_scale


class Img2ImgBody(GenerationBody):
    """POST /sdapi/v1/img2img, with A1111's API defaults (which differ from its UI's)."""
    init_images: list[str] = Field(default_factory=list)
    resize_mode: int = 0
    denoising_strength: float = 0.75
    mask: str | None = None
    mask_blur: int | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    include_init_images: bool = False


class ApiError(BaseModel):
    """The body of a 4xx answer: a message naming the field (ours), or a list of errors (FastAPI's own checks)."""
    detail: str | list[dict[str, Any]]


class GenerationResponse(BaseModel):
    images: list[str]
    parameters: dict[str, Any]
    info: str


class PngInfoBody(BaseModel):
    image: str = Field(description="base64 image, optionally as a data: URL")


class PngInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: dict[str, Any]
    current_image: str | None
    textinfo: str | None
    current_task: str | None = None
    queue_position: int | None = None
    status: str | None = None


class CheckpointItem(BaseModel):
    title: str
    model_name: str
    hash: str | None
    sha256: str | None
    filename: str
    config: str | None = None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float = -1
    need_inner_model: bool = False


class PromptStyleItem(BaseModel):
    name: str
    prompt: str | None
    negative_prompt: str | None


class UpscalerItem(BaseModel):
    """GET /sdapi/v1/upscalers item, as A1111 lists it."""
    model_config = ConfigDict(protected_namespaces=())

    name: str
    model_name: str | None
    model_path: str | None
    model_url: str | None
    scale: float | None


class FaceRestorerItem(BaseModel):
    """GET /sdapi/v1/face-restorers item, as A1111 lists it."""
    name: str
    cmd_dir: str | None


class LatentUpscaleModeItem(BaseModel):
    name: str


class ExtrasBaseBody(BaseModel):
    """A1111's extras request fields. Face restoration runs after upscaling (A1111's order; upscale_first is kept
    for old clients and, as in A1111 1.6+, changes nothing)."""
    model_config = ConfigDict(extra="ignore")

    resize_mode: int = 0
    show_extras_results: bool = True
    gfpgan_visibility: float = 0
    codeformer_visibility: float = 0
    codeformer_weight: float = 0
    upscaling_resize: float = 2
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0
    upscale_first: bool = False


class ExtrasSingleImageBody(ExtrasBaseBody):
    image: str = Field("", description="base64 image, optionally as a data: URL")


class FileData(BaseModel):
    data: str = Field(description="base64 representation of the file")
    name: str


class ExtrasBatchImagesBody(ExtrasBaseBody):
    imageList: list[FileData] = Field(description="images to upscale, base64")  # A1111's camelCase name


class ExtrasSingleImageResponse(BaseModel):
    html_info: str
    image: str | None = None


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]


class LoraItem(BaseModel):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class VaeItem(BaseModel):
    model_name: str
    filename: str


class EmbeddingItem(BaseModel):
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    shape: int | None = None  # the width of each vector
    vectors: int | None = None  # how many tokens it takes
    error: str | None = None  # skipped embeddings: why


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, EmbeddingItem]
    skipped: dict[str, EmbeddingItem]
