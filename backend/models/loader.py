"""Turn a checkpoint (single file, diffusers folder or hub repo id) into a ready diffusers pipeline, offline."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml

from backend.core.model_family import ModelFamily
from backend.models.construction import ModelConstruction
from backend.models.detection import FAMILY_LABELS, SDXL_REFINER_OPENCLIP_PREFIX, DetectedModel, detect
from backend.models.flow_detection import flow_file, is_flux_fill
from backend.models.flow_loader import ComponentFolders, FlowLoader, tie_and_eval
from backend.models.gguf_weights import has_quantized
from backend.models.original_layout import SD2_OPENCLIP_PREFIX, SDXL_OPENCLIP_PREFIX
from backend.models.tokenizer import build_clip_tokenizer
from backend.models.weight_files import CheckpointError, declared_resolution, load_state_dict, sniff_format

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline, UNet2DConditionModel

# diffusers, transformers and accelerate are imported where a model is loaded, not with this module: together they
# take seconds to import, and the page should not wait for them (bench/startup.py).
log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A pipeline plus what the rest of the app needs to know about it."""
    pipeline: DiffusionPipeline
    family: ModelFamily
    inpainting: bool
    sources: dict[str, str] | None = None  # flow models: component -> the file it came from


    @property
    def label(self) -> str:
        return FAMILY_LABELS[self.family] + (" inpainting" if self.inpainting else "")

    @property
    def size_bytes(self) -> int:
        """Bytes the model's tensors hold as stored (fp8 counts one byte a weight); a tensor shared by two modules
        (T5's tied embedding) counts once."""
        seen, total = set(), 0
        for component in self.pipeline.components.values():
            if not isinstance(component, torch.nn.Module):
                continue
            for tensor in (*component.parameters(), *component.buffers()):
                if tensor.device.type == "meta" or tensor.data_ptr() in seen:
                    continue
                seen.add(tensor.data_ptr())
                total += tensor.numel() * tensor.element_size()
        return total


def refuse_bitsandbytes(path: Path, state: dict[str, torch.Tensor]):
    """NF4/int8 files (bitsandbytes) need CUDA and bitsandbytes; neither is assumed here, so they are refused plainly
    rather than failing half-way."""
    if not any(".quant_state." in key or key.endswith((".absmax", ".SCB")) for key in state):
        return
    where = "this server has no CUDA GPU" if not torch.cuda.is_available() else "this version cannot load them yet"
    raise CheckpointError(f"{path.name} is quantized with bitsandbytes (NF4/int8), which needs a CUDA GPU; {where}. "
                          "Use the fp8 or full-precision file of this model")


def materialise(model: torch.nn.Module, weights: dict[str, torch.Tensor], dtype: torch.dtype, what: str):
    """Load `weights` into a model built on the meta device, checking every tensor is there with its shape."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in weights]
    if missing:
        raise CheckpointError(f"{what} weights are incomplete: {len(missing)} tensors missing (first: {missing[0]})")
    for key, tensor in expected.items():
        if tuple(weights[key].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{what} tensor {key} has shape {tuple(weights[key].shape)}, "
                                  f"expected {tuple(tensor.shape)}")
    model.load_state_dict({key: weights[key].to(dtype) for key in expected}, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def _is_v_prediction_sd2(unet: UNet2DConditionModel) -> bool:
    """A1111's test for SD2 checkpoints: a v-model pulls a constant input strongly negative at t=999."""
    config = unet.config
    sample = torch.full((1, config.in_channels, 8, 8), 0.5, dtype=unet.dtype)
    context = torch.full((1, 2, config.cross_attention_dim), 0.5, dtype=unet.dtype)
    with torch.no_grad():
        out = unet(sample, torch.tensor([999]), encoder_hidden_states=context).sample
    return (out - sample).mean().item() < -1


def _sidecar_parameterization(path: Path) -> str | None:
    """A1111 reads `<checkpoint>.yaml` beside the file; `model.params.parameterization: v` marks a v-model."""
    yaml_path = path.with_suffix(".yaml")
    if not yaml_path.is_file():
        return None
    try:
        params = (yaml.safe_load(yaml_path.read_text()) or {}).get("model", {}).get("params", {})
    except (yaml.YAMLError, AttributeError) as error:
        raise CheckpointError(f"{yaml_path.name} is not a valid model config: {error}") from error
    if "parameterization" not in params:
        return None
    return "v_prediction" if params["parameterization"] == "v" else "epsilon"


MODEL_LIBRARIES = "model libraries"


def import_model_libraries():
    """Import, once and from one thread, everything loading and running models needs. These libraries are not
    safe to import from two threads at once (lazy modules and circular imports fail half-initialised), so app.py
    calls this before the job worker and the first model load start; afterwards threads only use them."""
    import importlib

    for module in ("accelerate", "diffusers.loaders.single_file_utils", "diffusers.loaders.peft", "peft",
                   "spandrel", "torchvision", "transformers.models.clip.modeling_clip"):
        importlib.import_module(module)
    import diffusers

    from backend.core.samplers import SAMPLERS
    from backend.models.pipeline_classes import PIPELINE_CLASSES

    for name in {*PIPELINE_CLASSES.values(), *(spec.scheduler_class for spec in SAMPLERS.values()),
                 "AutoencoderKL", "AutoencoderTiny", "UNet2DConditionModel", "DiffusionPipeline"}:
        getattr(diffusers, name)


FLOW_PIPELINE_FAMILIES = {"FluxPipeline": "flux", "FluxFillPipeline": "flux", "StableDiffusion3Pipeline": "sd3"}


class CheckpointLoader:
    """Builds pipelines; holds the offline CLIP tokenizers so they are built once per app. `construction`: the app's
    ModelConstruction (a loader built alone, in a tool or a test, has a lock of its own)."""

    def __init__(self, construction: ModelConstruction | None = None, components: ComponentFolders | None = None,
                 flow_dtype: torch.dtype | None = None):
        self.construction = construction or ModelConstruction()
        self.components = components or ComponentFolders()  # separate text encoders and VAEs (Flux, SD3)
        self.flow_dtype = flow_dtype  # Flux/SD3's compute dtype when it differs from the app's (devices.py)

    @cached_property
    def tokenizer(self):
        return build_clip_tokenizer()

    @cached_property
    def tokenizer_open_clip(self):
        return build_clip_tokenizer(pad_token="!")

    @cached_property
    def flow(self) -> FlowLoader:
        return FlowLoader(self.construction, self.components, self.tokenizer, self.tokenizer_open_clip)

    def load(self, source: str | Path, dtype: torch.dtype, local_files_only: bool = True,
             components: dict[str, Path] | None = None) -> LoadedModel:
        """`components`: for Flux/SD3 files, the separate files chosen for what the checkpoint lacks
        ("clip_l", "clip_g", "t5xxl", "vae" -> path)."""
        self.construction.once(MODEL_LIBRARIES, import_model_libraries)  # a model switched while the app starts
        path = Path(source)
        if path.is_dir():
            return self.load_diffusers(str(path), dtype, local_files_only=True)
        if path.is_file():
            return self.load_single_file(path, dtype, components)
        if "/" in str(source) and not path.exists():
            return self.load_diffusers(str(source), dtype, local_files_only=local_files_only)
        raise CheckpointError(f"checkpoint not found: {source}")

    def load_diffusers(self, folder_or_repo: str, dtype: torch.dtype, local_files_only: bool) -> LoadedModel:
        from diffusers import DiffusionPipeline

        extra = {}
        index = Path(folder_or_repo) / "model_index.json"
        facts = json.loads(index.read_text()) if index.is_file() else {}
        if "safety_checker" in facts:
            extra = {"safety_checker": None, "requires_safety_checker": False}
        if self.flow_dtype is not None and facts.get("_class_name") in FLOW_PIPELINE_FAMILIES:
            dtype = self.flow_dtype
        try:
            with self.construction.building():  # from_pretrained builds under accelerate's process-wide patch
                pipeline = DiffusionPipeline.from_pretrained(folder_or_repo, dtype=dtype,
                                                             local_files_only=local_files_only, **extra)
        except (OSError, ValueError) as error:
            raise CheckpointError(f"cannot load diffusers model {folder_or_repo}: {error}") from error
        flow_family = FLOW_PIPELINE_FAMILIES.get(type(pipeline).__name__)
        if flow_family:
            for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
                if getattr(pipeline, name, None) is not None:
                    tie_and_eval(getattr(pipeline, name))
            sources = {name: Path(folder_or_repo).name for name, c in pipeline.components.items()
                       if isinstance(c, torch.nn.Module)}
            return LoadedModel(pipeline=pipeline, family=flow_family, sources=sources,
                               inpainting=is_flux_fill(pipeline.transformer.config))
        unet = pipeline.unet
        if unet.config.addition_embed_type == "text_time":
            family = "sdxl" if getattr(pipeline, "text_encoder", None) is not None else "sdxl-refiner"
        else:
            family = "sd2" if unet.config.cross_attention_dim == 1024 else "sd1"
        return LoadedModel(pipeline=pipeline, family=family, inpainting=unet.config.in_channels == 9)

    def load_single_file(self, path: Path, dtype: torch.dtype,
                         components: dict[str, Path] | None = None) -> LoadedModel:
        state = load_state_dict(path)
        refuse_bitsandbytes(path, state)
        found = flow_file(state)
        if found is not None:
            try:
                pipeline, parts = self.flow.load(path, state, found, self.flow_dtype or dtype, components)
            except KeyError as error:
                raise CheckpointError(f"{path.name} is missing weights the {FAMILY_LABELS[found.family]} layout "
                                      f"needs: {error}") from error
            return LoadedModel(pipeline=pipeline, family=found.family, sources=parts.sources,
                               inpainting=is_flux_fill(pipeline.transformer.config))
        if has_quantized(state) or sniff_format(path) == "gguf":
            raise CheckpointError(f"{path.name} is a GGUF file but not a Flux or SD3 transformer; GGUF is read for "
                                  "those only")
        detected = detect(state)
        resolution = declared_resolution(path)
        if resolution:  # the UNet's default size follows what the file says it was trained at
            scale = 2 ** (len(detected.configs["vae"]["block_out_channels"]) - 1)
            detected.configs["unet"]["sample_size"] = resolution[1] // scale
        try:
            return self._build(path, state, detected, dtype)
        except KeyError as error:
            raise CheckpointError(f"{path.name} is missing weights the {detected.label} layout needs: {error}") \
                from error

    def _build(self, path: Path, state, detected: DetectedModel, dtype: torch.dtype) -> LoadedModel:
        import diffusers
        from accelerate import init_empty_weights
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

        configs = detected.configs
        with self.construction.building(), init_empty_weights():
            unet = UNet2DConditionModel.from_config(configs["unet"])
            vae = AutoencoderKL.from_config(configs["vae"])
        unet = materialise(unet, convert_ldm_unet_checkpoint(state, configs["unet"]), dtype, "UNet")
        vae = materialise(vae, convert_ldm_vae_checkpoint(state, configs["vae"]), dtype, "VAE")
        components = {"unet": unet, "vae": vae}
        if "text_encoder" in configs:
            components["text_encoder"] = self._text_encoder(state, detected, "text_encoder", dtype)
        if "text_encoder_2" in configs:
            components["text_encoder_2"] = self._text_encoder(state, detected, "text_encoder_2", dtype)

        prediction = _sidecar_parameterization(path)
        if prediction is None and detected.family == "sd2" and not detected.inpainting:
            prediction = "v_prediction" if _is_v_prediction_sd2(unet) else "epsilon"
        scheduler_config = dict(configs["scheduler"], prediction_type=prediction or "epsilon")
        if "v_pred" in state:  # marker key used by SDXL v-prediction fine-tunes
            scheduler_config["prediction_type"] = "v_prediction"
        if "ztsnr" in state:
            scheduler_config["rescale_betas_zero_snr"] = True
        scheduler = getattr(diffusers, scheduler_config["_class_name"]).from_config(scheduler_config)
        pipeline = self._assemble(detected, components, scheduler)
        return LoadedModel(pipeline=pipeline, family=detected.family, inpainting=detected.inpainting)

    def _text_encoder(self, state, detected: DetectedModel, component: str, dtype: torch.dtype):
        from accelerate import init_empty_weights
        from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        config = CLIPTextConfig.from_dict(detected.configs[component])
        open_clip_prefix = {("sd2", "text_encoder"): SD2_OPENCLIP_PREFIX,
                            ("sdxl", "text_encoder_2"): SDXL_OPENCLIP_PREFIX,
                            ("sdxl-refiner", "text_encoder_2"): SDXL_REFINER_OPENCLIP_PREFIX}.get(
            (detected.family, component))
        model_class = CLIPTextModelWithProjection if component == "text_encoder_2" else CLIPTextModel
        with self.construction.building(), init_empty_weights():
            model = model_class(config)
        if open_clip_prefix:
            weights = convert_open_clip_checkpoint(model, state, prefix=open_clip_prefix)
        else:
            weights = {(k if k.startswith("text_model.") else "text_model." + k): v
                       for k, v in convert_ldm_clip_checkpoint(state).items()}
        if not any(key.startswith("text_model.") for key in model.state_dict()):
            weights = {key.removeprefix("text_model."): value for key, value in weights.items()}
        return materialise(model, weights, dtype, "text encoder" + (" 2" if component.endswith("2") else ""))

    def _assemble(self, detected: DetectedModel, components: dict, scheduler) -> DiffusionPipeline:
        from diffusers import (
            StableDiffusionInpaintPipeline,
            StableDiffusionPipeline,
            StableDiffusionXLImg2ImgPipeline,
            StableDiffusionXLInpaintPipeline,
            StableDiffusionXLPipeline,
        )

        if detected.family in ("sd1", "sd2"):
            cls = StableDiffusionInpaintPipeline if detected.inpainting else StableDiffusionPipeline
            # SD2's OpenCLIP encoder pads with "!" (as its diffusers tokenizer and A1111 do), SD1 with the end token.
            tokenizer = self.tokenizer_open_clip if detected.family == "sd2" else self.tokenizer
            return cls(**components, tokenizer=tokenizer, scheduler=scheduler, safety_checker=None,
                       feature_extractor=None, requires_safety_checker=False)
        if detected.family == "sdxl":
            cls = StableDiffusionXLInpaintPipeline if detected.inpainting else StableDiffusionXLPipeline
            return cls(**components, tokenizer=self.tokenizer, tokenizer_2=self.tokenizer_open_clip,
                       scheduler=scheduler)
        return StableDiffusionXLImg2ImgPipeline(**components, text_encoder=None, tokenizer=None,
                                                tokenizer_2=self.tokenizer_open_clip, scheduler=scheduler,
                                                requires_aesthetics_score=True)
