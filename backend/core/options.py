"""A1111's user options (its `config.json`): every key that has a meaning in this server, with A1111's default,
its type and range, and the Settings section A1111 shows it in. `Options` validates a whole set of values; a wrong
type or range raises `OptionError` naming the key. The store that loads and saves them is options_store.py.

Keys this server honours are in USED_OPTIONS; the others are stored and returned (clients read them back) but
change nothing here yet.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from backend.core.errors import UserError

SAVING = "Saving images/grids"
PATHS = "Paths for saving"
DIRS = "Saving to a directory"
PREVIEWS = "Live previews"
SAMPLING = "Sampler parameters"
SD = "Stable Diffusion"
VAE = "VAE"
FACES = "Face restoration"
UI = "User interface"
INFOTEXT = "Infotext"
SECTIONS = (SAVING, PATHS, DIRS, SD, VAE, SAMPLING, PREVIEWS, FACES, UI, INFOTEXT)

IMAGE_FORMATS = Literal["png", "jpg", "jpeg", "webp"]
PREVIEW_METHODS = Literal["Full", "Approx NN", "Approx cheap", "TAESD"]


def option(default: Any, label: str, section: str, **constraints: Any) -> Any:
    return Field(default, title=label, json_schema_extra={"section": section}, **constraints)


class OptionError(UserError):
    """A value a client or the Settings tab gave for an option is of the wrong type or out of range, or the key
    is not an option."""


class Options(BaseModel):
    # strict: "80" is not a number and 1 is not a boolean; JSON numbers still fill float options
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid", protected_namespaces=())

    # --- Saving images/grids
    samples_save: bool = option(True, "Always save all generated images", SAVING)
    samples_format: IMAGE_FORMATS = option("png", "File format for images", SAVING)
    samples_filename_pattern: str = option("", "Images filename pattern", SAVING, max_length=512)
    save_images_add_number: bool = option(True, "Add number to filename when saving", SAVING)
    grid_save: bool = option(True, "Always save all generated image grids", SAVING)
    grid_format: IMAGE_FORMATS = option("png", "File format for grids", SAVING)
    grid_only_if_multiple: bool = option(True, "Do not save grids consisting of one picture", SAVING)
    n_rows: int = option(-1, "Grid row count; -1 for autodetect and 0 for it to be same as batch size", SAVING,
                         ge=-1, le=16)
    enable_pnginfo: bool = option(True, "Save text information about generation parameters as chunks to png files",
                                  SAVING)
    save_txt: bool = option(False, "Create a text file with infotext next to every image", SAVING)
    jpeg_quality: int = option(80, "Quality for saved jpeg and avif images", SAVING, ge=1, le=100)
    webp_lossless: bool = option(False, "Use lossless compression for webp images", SAVING)
    save_images_before_face_restoration: bool = option(False, "Save a copy of image before doing face restoration",
                                                       SAVING)
    save_images_before_highres_fix: bool = option(False, "Save a copy of image before applying highres fix", SAVING)
    save_init_img: bool = option(False, "Save init images when using img2img", SAVING)
    save_incomplete_images: bool = option(False, "Save incomplete images", SAVING)
    # --- Paths for saving ("": this server's folder under --outputs-dir; a relative path is inside it too)
    outdir_samples: str = option("", "Output directory for images; if empty, defaults to three directories below",
                                 PATHS, max_length=1024)
    outdir_txt2img_samples: str = option("", "Output directory for txt2img images", PATHS, max_length=1024)
    outdir_img2img_samples: str = option("", "Output directory for img2img images", PATHS, max_length=1024)
    outdir_extras_samples: str = option("", "Output directory for images from extras tab", PATHS, max_length=1024)
    outdir_grids: str = option("", "Output directory for grids; if empty, defaults to two directories below", PATHS,
                               max_length=1024)
    outdir_txt2img_grids: str = option("", "Output directory for txt2img grids", PATHS, max_length=1024)
    outdir_img2img_grids: str = option("", "Output directory for img2img grids", PATHS, max_length=1024)
    # --- Saving to a directory
    save_to_dirs: bool = option(True, "Save images to a subdirectory", DIRS)
    grid_save_to_dirs: bool = option(True, "Save grids to a subdirectory", DIRS)
    directories_filename_pattern: str = option("[date]", "Directory name pattern", DIRS, max_length=512)
    directories_max_prompt_words: int = option(8, "Max prompt words for [prompt_words] pattern", DIRS, ge=1, le=20)
    # --- Stable Diffusion
    sd_model_checkpoint: str | None = option(None, "Stable Diffusion checkpoint", SD, max_length=1024)
    sd_checkpoints_limit: int = option(1, "Maximum number of checkpoints loaded at the same time", SD, ge=1, le=10)
    sd_checkpoints_keep_in_cpu: bool = option(True, "Only keep one model on device", SD)
    CLIP_stop_at_last_layers: int = option(1, "Clip skip", SD, ge=1, le=12)
    enable_batch_seeds: bool = option(True, "Make K-diffusion samplers produce same images in a batch as when "
                                            "making a single image", SD)
    comma_padding_backtrack: int = option(20, "Prompt word wrap length limit", SD, ge=0, le=74)
    upcast_attn: bool = option(False, "Upcast cross attention layer to float32", SD)
    # this server's default is CPU (the same noise on every device; A1111's is GPU); its NV is not offered
    randn_source: Literal["CPU", "GPU", "NV"] = option("CPU", "Random number generator source", SD)
    tiling: bool = option(False, "Tiling", SD)
    hires_fix_refiner_pass: Literal["first pass", "second pass", "both passes"] = option(
        "second pass", "Hires fix: which pass to enable refiner for", SD)
    img2img_color_correction: bool = option(False, "Apply color correction to img2img results to match original "
                                                   "colors", SD)
    img2img_fix_steps: bool = option(False, "With img2img, do exactly the amount of steps the slider specifies", SD)
    img2img_background_color: str = option("#ffffff", "With img2img, fill transparent parts of the input image "
                                                      "with this color", SD, pattern=r"^#[0-9a-fA-F]{6}$")
    initial_noise_multiplier: float = option(1.0, "Noise multiplier for img2img", SD, ge=0.0, le=1.5)
    # --- VAE
    sd_vae: str = option("Automatic", "SD VAE", VAE, max_length=1024)
    sd_vae_overrides_per_model_preferences: bool = option(True, "Selected VAE overrides per-model preferences", VAE)
    sd_vae_decode_method: Literal["Full", "TAESD"] = option("Full", "VAE type for decode", VAE)
    sd_vae_encode_method: Literal["Full", "TAESD"] = option("Full", "VAE type for encode", VAE)
    # --- Sampler parameters
    eta_ddim: float = option(0.0, "Eta for DDIM", SAMPLING, ge=0.0, le=1.0)
    eta_ancestral: float = option(1.0, "Eta for k-diffusion samplers", SAMPLING, ge=0.0, le=1.0)
    ddim_discretize: Literal["uniform", "quad"] = option("uniform", "img2img DDIM discretize", SAMPLING)
    s_churn: float = option(0.0, "sigma churn", SAMPLING, ge=0.0, le=100.0)
    s_tmin: float = option(0.0, "sigma tmin", SAMPLING, ge=0.0, le=10.0)
    s_tmax: float = option(0.0, "sigma tmax", SAMPLING, ge=0.0, le=999.0)
    s_noise: float = option(1.0, "sigma noise", SAMPLING, ge=0.0, le=1.1)
    sigma_min: float = option(0.0, "sigma min", SAMPLING, ge=0.0)
    sigma_max: float = option(0.0, "sigma max", SAMPLING, ge=0.0)
    rho: float = option(0.0, "rho", SAMPLING, ge=0.0)
    eta_noise_seed_delta: int = option(0, "Eta noise seed delta", SAMPLING, ge=0, le=2**32 - 1)
    always_discard_next_to_last_sigma: bool = option(False, "Always discard next-to-last sigma", SAMPLING)
    sgm_noise_multiplier: bool = option(False, "SGM noise multiplier", SAMPLING)
    uni_pc_variant: Literal["bh1", "bh2", "vary_coeff"] = option("bh1", "UniPC variant", SAMPLING)
    uni_pc_skip_type: Literal["time_uniform", "time_quadratic", "logSNR"] = option("time_uniform",
                                                                                  "UniPC skip type", SAMPLING)
    uni_pc_order: int = option(3, "UniPC order", SAMPLING, ge=1, le=50)
    uni_pc_lower_order_final: bool = option(True, "UniPC lower order final", SAMPLING)
    # --- Live previews
    live_previews_enable: bool = option(True, "Show live previews of the created image", PREVIEWS)
    live_previews_image_format: Literal["jpeg", "png", "webp"] = option("png", "Live preview file format", PREVIEWS)
    show_progress_grid: bool = option(True, "Show previews of all images generated in a batch as a grid", PREVIEWS)
    show_progress_every_n_steps: int = option(10, "Live preview display period (in sampling steps; -1: only after "
                                                  "each batch)", PREVIEWS, ge=-1, le=32)
    show_progress_type: PREVIEW_METHODS = option("Approx NN", "Live preview method", PREVIEWS)
    live_preview_content: Literal["Combined", "Prompt", "Negative prompt"] = option("Prompt",
                                                                                    "Live preview subject", PREVIEWS)
    live_preview_refresh_period: int = option(1000, "Progressbar and preview update period (ms)", PREVIEWS,
                                              ge=0, le=60_000)
    live_preview_fast_interrupt: bool = option(False, "Return image with chosen sampler when interrupted", PREVIEWS)
    # --- Face restoration (used by the face restoration feature)
    face_restoration: bool = option(False, "Restore faces", FACES)
    face_restoration_model: str | None = option("CodeFormer", "Face restoration model", FACES, max_length=256)
    code_former_weight: float = option(0.5, "CodeFormer weight (0 = maximum effect, 1 = minimum effect)", FACES,
                                       ge=0.0, le=1.0)
    face_restoration_unload: bool = option(False, "Move face restoration model from VRAM into RAM after processing",
                                           FACES)
    # --- User interface
    send_seed: bool = option(True, "Send seed when sending prompt or image to other interface", UI)
    send_size: bool = option(True, "Send size when sending prompt or image to another interface", UI)
    return_grid: bool = option(True, "Show grid in gallery", UI)
    do_not_show_images: bool = option(False, "Do not show any images in gallery", UI)
    js_modal_lightbox: bool = option(True, "Full page image viewer: enable", UI)
    samplers_in_dropdown: bool = option(True, "Use dropdown for sampler selection instead of radio group", UI)
    quicksettings_list: list[str] = option(["sd_model_checkpoint"], "Quicksettings list", UI, max_length=64)
    # sd-webui-controlnet's key; the page is built once, so a change shows after a restart (as there)
    control_net_unit_count: int = option(3, "Multi-ControlNet: ControlNet unit number (requires restart)", UI,
                                         ge=1, le=8)
    # --- Infotext
    add_model_hash_to_info: bool = option(True, "Add model hash to infotext", INFOTEXT)
    add_model_name_to_info: bool = option(True, "Add model name to infotext", INFOTEXT)
    add_vae_name_to_info: bool = option(True, "Add VAE name to infotext", INFOTEXT)
    add_vae_hash_to_info: bool = option(True, "Add VAE hash to infotext", INFOTEXT)
    add_version_to_infotext: bool = option(True, "Add program version to infotext", INFOTEXT)


# Keys this server acts on; every other option is kept and returned but has no effect yet.
USED_OPTIONS = frozenset({
    "samples_format", "samples_filename_pattern", "save_images_add_number", "enable_pnginfo", "save_txt",
    "jpeg_quality", "webp_lossless", "outdir_samples", "outdir_txt2img_samples", "outdir_img2img_samples",
    "outdir_extras_samples", "save_to_dirs", "directories_filename_pattern", "directories_max_prompt_words",
    "sd_model_checkpoint", "sd_checkpoints_limit", "live_previews_enable", "show_progress_every_n_steps",
    "samples_save", "grid_save", "grid_format", "grid_only_if_multiple", "n_rows", "return_grid", "outdir_grids",
    "outdir_txt2img_grids", "outdir_img2img_grids", "grid_save_to_dirs", "eta_noise_seed_delta", "randn_source",
    "control_net_unit_count",
})

OPTION_NAMES = tuple(Options.model_fields)


def option_section(key: str) -> str:
    return Options.model_fields[key].json_schema_extra["section"]


def option_label(key: str) -> str:
    return Options.model_fields[key].title or key


def validate_options(values: dict[str, Any]) -> Options:
    """`values` (all or some keys; the rest take their defaults) as Options; OptionError names the first bad key."""
    try:
        return Options.model_validate(values)
    except ValidationError as error:
        first = error.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else "options"
        if first["type"] == "extra_forbidden":
            raise OptionError(key, "not an option this server knows") from None
        raise OptionError(key, _message(key, first)) from None


def _message(key: str, error: dict) -> str:
    bounds = {name: getattr(item, name) for item in getattr(Options.model_fields.get(key), "metadata", ())
              for name in ("ge", "le") if getattr(item, name, None) is not None}
    if error["type"] in ("greater_than_equal", "less_than_equal") and len(bounds) == 2:
        return f"must be from {bounds['ge']} to {bounds['le']} (got {error.get('input')})"
    text = error["msg"].replace("Input should be", "must be")
    if error["type"].endswith("_type"):
        text += f" (got {type(error.get('input')).__name__})"
    return text
