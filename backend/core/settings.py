"""Server-wide settings, built once from the command line by app.py and passed to every service."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from backend.core.speed_settings import SpeedOptions


@dataclass(frozen=True)
class Settings:
    models_dir: Path
    outputs_dir: Path
    cache_dir: Path
    ckpt_dir: Path | None = None  # defaults to <models_dir>/Stable-diffusion
    embeddings_folder: Path | None = None  # defaults to embeddings/ beside the models folder, as in A1111
    lora_folder: Path | None = None  # defaults to <models_dir>/Lora
    vae_folder: Path | None = None  # defaults to <models_dir>/VAE
    extensions_dir: Path | None = None  # None: no extensions (tests); app.py passes ./extensions
    extension_install_refused: str | None = None  # why installing extensions is off (--listen/--share), or None
    server_folders_refused: str | None = None  # why jobs may not read server folders (--listen/--share), or None
    reachable_from_network: bool = False  # --listen or --share: the server never fetches from its own network
    startup_checkpoint: str | None = None
    device: str = "auto"  # auto | cpu | cuda | mps
    precision: str = "auto"  # auto | fp32 | fp16 | bf16
    xformers: bool = False
    max_models_in_memory: int | None = 2  # checkpoints kept loaded (GPU + CPU tiers); None: option sd_checkpoints_limit
    max_cache_gb: float = 16.0  # byte limit of that cache
    max_models_on_gpu: int = 1  # the rest of the cache waits in CPU RAM
    preview_every: int | None = None  # live preview every N steps (0: off); None: the live preview options decide
    offline: bool = False  # True: a hub repo id is only looked up in the local Hugging Face cache
    upscale_tile_size: int = 192  # upscaler models see tiles of this many pixels; 0 = the whole image at once
    upscale_tile_overlap: int = 16  # pixels shared by neighbouring tiles, blended so no seams show
    max_upscale_size: int = 8192  # the largest width or height an upscale (extras) may produce
    max_upscalers_in_memory: int = 2  # loaded upscaler models kept for the next job
    offload: str = "none"  # none | model (--medvram) | sequential (--lowvram): for GPUs with little memory
    compile_unet: bool = False  # --compile: torch.compile the UNet (first job after a load pays the compile)
    vae_tiling: str = "auto"  # auto | always | never: decode large images in tiles (--tiled-vae)
    compile_cache_dir: Path | None = None  # compiled kernels kept across restarts; None: <cache_dir>/torch-compile
    command_flags: dict = field(default_factory=dict)  # every flag's value as started (GET /sdapi/v1/cmd-flags)

    @property
    def speed(self):
        """The speed/memory options as backend.models.speed_options applies them."""
        return SpeedOptions(offload=self.offload, compile=self.compile_unet, vae_tiling=self.vae_tiling,
                            compile_cache_dir=self.compile_cache_dir or self.cache_dir / "torch-compile")

    @property
    def options_file(self) -> Path:
        """A1111's user options, config.json, in the data folder (beside the models folder)."""
        return self.models_dir.parent / "config.json"

    @property
    def ui_defaults_file(self) -> Path:
        """A1111's ui-config.json: the values the txt2img/img2img forms open with."""
        return self.models_dir.parent / "ui-config.json"

    @property
    def option_overrides(self) -> dict:
        """Options that command-line flags set: they win over config.json."""
        overrides: dict = {}
        if self.max_models_in_memory is not None:
            overrides["sd_checkpoints_limit"] = min(max(self.max_models_in_memory, 1), 10)
        if self.preview_every is not None:
            overrides |= {"show_progress_every_n_steps": min(self.preview_every, 32),
                          "live_previews_enable": self.preview_every > 0}
        return overrides

    @property
    def hypernetworks_dir(self) -> Path:
        return self.models_dir / "hypernetworks"

    @property
    def styles_file(self) -> Path:
        """A1111's prompt styles, styles.csv, kept beside the models folder."""
        return self.models_dir.parent / "styles.csv"

    @property
    def upscalers_cache_file(self) -> Path:
        """Detected architecture and scale of each upscaler file, so listing never reloads them."""
        return self.cache_dir / "upscalers.json"

    @property
    def embeddings_dir(self) -> Path:
        """Textual-inversion embeddings: A1111 keeps them in `embeddings/` beside `models/`."""
        return self.embeddings_folder or self.models_dir.parent / "embeddings"

    @property
    def extensions_state_file(self) -> Path:
        """Which extensions the user disabled, remembered across restarts."""
        return self.cache_dir / "extensions.json"

    @property
    def lora_dir(self) -> Path:
        return self.lora_folder or self.models_dir / "Lora"

    @property
    def vae_dir(self) -> Path:
        return self.vae_folder or self.models_dir / "VAE"

    @property
    def text_encoder_dir(self) -> Path:
        """Separate text encoders (clip_l, clip_g, t5xxl) for Flux and SD3, as Forge keeps them."""
        return self.models_dir / "text_encoder"

    @property
    def unet_dir(self) -> Path:
        """GGUF Flux/SD3 transformers, where ComfyUI keeps them (Forge reads them from Stable-diffusion too)."""
        return self.models_dir / "unet"

    @property
    def checkpoints_dir(self) -> Path:
        return self.ckpt_dir or self.models_dir / "Stable-diffusion"

    @property
    def controlnet_dir(self) -> Path:
        """ControlNet models, A1111's and Forge's models/ControlNet."""
        return self.models_dir / "ControlNet"

    @property
    def ipadapter_dir(self) -> Path:
        """IP-Adapter models where ComfyUI keeps them (they are listed with the ControlNets, as in Forge)."""
        return self.models_dir / "ipadapter"

    @property
    def clip_vision_dir(self) -> Path:
        """CLIP vision image encoders for IP-Adapter (A1111's, Forge's and ComfyUI's models/clip_vision)."""
        return self.models_dir / "clip_vision"

    @property
    def controlnet_preprocessor_dir(self) -> Path:
        """Weights of the preprocessors that need them (depth, pose...), in sd-webui-controlnet's
        annotator/downloads layout (<folder>/<file>) or flat."""
        return self.models_dir / "ControlNetPreprocessor"
