"""Build Flux.1 and SD3/SD3.5 pipelines from single files, offline.

A file may carry everything (ComfyUI's and Stability's all-in-one files) or the transformer alone (BFL's release);
what it lacks comes from separate component files, as Forge and ComfyUI users keep them: text encoders in
`models/text_encoder/` (clip_l, clip_g, t5xxl) and the VAE in `models/VAE/` (ae.safetensors for Flux). T5's
tokenizer comes from `models/text_encoder/t5_tokenizer/` (a diffusers folder's tokenizer_2 or tokenizer_3 copied
there). Sizes come from the weights (flow_detection); every text encoder ends in eval mode with its embeddings tied.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from backend.models.construction import ModelConstruction
from backend.models.flow_detection import (
    TEXT_ENCODER_PREFIX,
    TEXT_ENCODERS,
    FlowFile,
    clip_config,
    flow_vae_config,
    flux_transformer_config,
    sd3_transformer_config,
    sub_state,
    t5_config,
    vae_state,
)
from backend.models.flow_layouts import flux_rows, sd3_rows, to_diffusers
from backend.models.gguf_weights import dequantized, has_quantized, load_quantized, logical_view, t5_names
from backend.models.weight_files import CheckpointError, load_state_dict

T5_TOKENIZER_FOLDER = "t5_tokenizer"
FLUX_VAE_FILE = "ae.safetensors"
TEXT_ENCODER_EXTENSIONS = (".safetensors", ".sft", ".gguf")  # GGUF: city96's quantized T5-XXL
COMPONENT_LABELS = {"clip_l": "CLIP-L text encoder", "clip_g": "CLIP-G text encoder", "t5xxl": "T5-XXL text encoder",
                    "vae": "VAE"}
_COMPONENT_PREFIXES = ("text_encoders.clip_l.transformer.", "text_encoders.clip_g.transformer.",
                       "text_encoders.t5xxl.transformer.", "transformer.", "first_stage_model.", "vae.")


def names_part(path: Path, component: str) -> bool:
    """Whether the file's name says it is `component`; city96's T5 GGUFs are named t5-v1_1-xxl-encoder-*."""
    stem = path.stem.lower()
    return component in stem or (component == "t5xxl" and "t5" in stem and "xxl" in stem)


@dataclass(frozen=True)
class ComponentFolders:
    """Where separate text encoders and VAEs live (Forge: models/text_encoder, models/VAE)."""
    text_encoder_dir: Path | None = None
    vae_dir: Path | None = None

    def default_file(self, component: str, family: str) -> Path | None:
        """The file used for `component` ("clip_l", "clip_g", "t5xxl", "vae") when the user chose none: the one
        whose name says it (full precision before fp8), Flux's ae.safetensors for its VAE."""
        if component == "vae":
            if family != "flux" or self.vae_dir is None:
                return None
            path = self.vae_dir / FLUX_VAE_FILE
            return path if path.is_file() else None
        if self.text_encoder_dir is None or not self.text_encoder_dir.is_dir():
            return None
        candidates = sorted((p for p in self.text_encoder_dir.iterdir()
                             if p.is_file() and p.suffix in TEXT_ENCODER_EXTENSIONS and names_part(p, component)),
                            key=lambda p: (p.suffix == ".gguf", "fp8" in p.stem.lower(), p.name))
        return candidates[0] if candidates else None

    @property
    def t5_tokenizer_dir(self) -> Path | None:
        return self.text_encoder_dir / T5_TOKENIZER_FOLDER if self.text_encoder_dir else None


@dataclass
class FlowParts:
    """What a flow model was built from: component -> file name (the checkpoint's own parts say "checkpoint")."""
    sources: dict[str, str] = field(default_factory=dict)


def _component_state(path: Path) -> dict[str, torch.Tensor]:
    """A separate component file's tensors, without the prefixes all-in-one files put before them."""
    state = load_state_dict(path)
    for prefix in _COMPONENT_PREFIXES:
        if any(key.startswith(prefix) for key in state):
            state = sub_state(state, prefix)
            break
    return state


FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def fp8_storage(state: dict[str, torch.Tensor]) -> torch.dtype | None:
    """The fp8 type most of the weights are stored in (fp8 checkpoints keep norms and biases wider), or None."""
    counts: dict[torch.dtype, int] = {}
    for tensor in state.values():
        counts[tensor.dtype] = counts.get(tensor.dtype, 0) + tensor.numel()
    fp8 = {dtype: count for dtype, count in counts.items() if dtype in FP8_DTYPES}
    if not fp8 or sum(fp8.values()) * 2 < sum(counts.values()):
        return None
    return max(fp8, key=fp8.get)


def tie_and_eval(module: torch.nn.Module) -> torch.nn.Module:
    """A text encoder ready to encode: eval mode (a T5 read from a single file can come back training, dropout on)
    and, for T5, the encoder's token embedding tied to the shared one (ComfyUI's files hold `shared.weight` only)."""
    shared = getattr(module, "shared", None)
    encoder = getattr(module, "encoder", None)
    if shared is not None and encoder is not None and getattr(encoder, "embed_tokens", None) is not shared:
        encoder.embed_tokens = shared
    return module.eval().requires_grad_(False)


class FlowLoader:
    def __init__(self, construction: ModelConstruction, folders: ComponentFolders, clip_tokenizer, clip_g_tokenizer):
        self.construction = construction
        self.folders = folders
        self.clip_tokenizer = clip_tokenizer
        self.clip_g_tokenizer = clip_g_tokenizer

    def load(self, path: Path, state: dict[str, torch.Tensor], found: FlowFile, dtype: torch.dtype,
             chosen: dict[str, Path] | None = None):
        """The pipeline and its parts' sources. `chosen`: component -> file the user picked for what the
        checkpoint lacks (else the folders' defaults)."""
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline

        family, parts = found.family, FlowParts()
        components = {"transformer": self._transformer(state, found, dtype)}
        parts.sources["transformer"] = path.name
        components["vae"] = self._vae(state, family, dtype, chosen or {}, parts)
        for name, component in TEXT_ENCODERS[family].items():
            components[component] = self._text_encoder(state, family, name, component, dtype, chosen or {}, parts)
        scheduler_config = dict(self._base("scheduler", family))
        if family == "flux" and not components["transformer"].config.guidance_embeds:  # schnell: no shift
            scheduler_config.update(shift=1.0, use_dynamic_shifting=False)
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
        t5_tokenizer = self.t5_tokenizer(components[TEXT_ENCODERS[family]["t5xxl"]])
        if family == "flux":
            pipeline = FluxPipeline(scheduler=scheduler, tokenizer=self.clip_tokenizer, tokenizer_2=t5_tokenizer,
                                    **components)
        else:
            pipeline = StableDiffusion3Pipeline(scheduler=scheduler, tokenizer=self.clip_tokenizer,
                                                tokenizer_2=self.clip_g_tokenizer, tokenizer_3=t5_tokenizer,
                                                **components)
        return pipeline, parts

    @staticmethod
    def _base(component: str, family: str) -> dict:
        from backend.models.detection import base_config

        return base_config(family, component)

    def _build(self, cls, config: dict, weights: dict, dtype: torch.dtype, what: str, rows=None):
        from accelerate import init_empty_weights

        from backend.models.loader import materialise

        with self.construction.building(), init_empty_weights():
            model = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
        if rows is not None:
            shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
            try:
                weights = to_diffusers(weights, rows, shapes)
            except KeyError as error:
                raise CheckpointError(f"the {what} weights are incomplete: {error} is missing") from error
            except ValueError as error:
                raise CheckpointError(f"the {what} weights do not fit together: {error}") from error
        if has_quantized(weights):  # a GGUF file: kept quantized
            return load_quantized(model, weights, dtype, what)
        return materialise(model, weights, dtype, what)

    def _transformer(self, state, found: FlowFile, dtype: torch.dtype):
        from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

        original = sub_state(state, found.prefix) if found.prefix else state
        sizes = logical_view(original)  # a quantized tensor's shape is its bytes'; the sizes are the decoded ones
        if found.family == "flux":
            model = self._build(FluxTransformer2DModel, flux_transformer_config(sizes), original, dtype,
                                "Flux transformer", flux_rows(original.keys()))
        else:
            model = self._build(SD3Transformer2DModel, sd3_transformer_config(sizes), original, dtype,
                                "SD3 transformer", sd3_rows(original.keys()))
        storage = fp8_storage(original)
        if storage is not None:
            # Kept in fp8 (a byte a weight, exactly the file's values), each layer cast up to `dtype` while it runs
            model.enable_layerwise_casting(storage_dtype=storage, compute_dtype=dtype)
        return model

    def _external(self, component: str, family: str, chosen: dict[str, Path], parts: FlowParts) -> dict:
        path = chosen.get(component) or self.folders.default_file(component, family)
        if path is None:
            where = (f"{self.folders.vae_dir}/{FLUX_VAE_FILE}" if component == "vae"
                     else f"{self.folders.text_encoder_dir}/ (a file named {component}*.safetensors"
                     + (" or a T5 GGUF, t5xxl*.gguf)" if component == "t5xxl" else ")"))
            raise CheckpointError(f"this {family_label(family)} checkpoint has no {COMPONENT_LABELS[component]} and "
                                  f"none was chosen or found: put it in {where}", field="text_encoders")
        parts.sources[component] = path.name
        return _component_state(path)

    def _vae(self, state, family: str, dtype: torch.dtype, chosen: dict[str, Path], parts: FlowParts):
        from diffusers import AutoencoderKL
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        original = {} if "vae" in chosen else vae_state(state)
        if not original:
            original = self._external("vae", family, chosen, parts)
        else:
            parts.sources["vae"] = "checkpoint"
        if "encoder.down_blocks.0.resnets.0.conv1.weight" in original:  # already in diffusers' layout
            return self._diffusers_vae(original, family, dtype)
        config = flow_vae_config(original, family)
        return self._build(AutoencoderKL, config, convert_ldm_vae_checkpoint(original, config), dtype, "VAE")

    def _diffusers_vae(self, weights, family: str, dtype: torch.dtype):
        from diffusers import AutoencoderKL

        config = self._base("vae", family)
        levels = sorted({int(k.split(".")[2]) for k in weights if k.startswith("encoder.down_blocks.")})
        channels = [weights[f"encoder.down_blocks.{i}.resnets.0.conv2.weight"].shape[0] for i in levels]
        config.update(block_out_channels=channels, latent_channels=weights["encoder.conv_out.weight"].shape[0] // 2,
                      down_block_types=["DownEncoderBlock2D"] * len(channels),
                      up_block_types=["UpDecoderBlock2D"] * len(channels),
                      layers_per_block=len({k.split(".")[4] for k in weights
                                            if k.startswith("encoder.down_blocks.0.resnets.")}),
                      use_quant_conv="quant_conv.weight" in weights,
                      use_post_quant_conv="post_quant_conv.weight" in weights)
        return self._build(AutoencoderKL, config, weights, dtype, "VAE")

    def _text_encoder(self, state, family: str, name: str, component: str, dtype: torch.dtype,
                      chosen: dict[str, Path], parts: FlowParts):
        weights = {} if name in chosen else sub_state(state, TEXT_ENCODER_PREFIX.format(name=name))
        if weights:
            parts.sources[name] = "checkpoint"
        else:
            weights = self._external(name, family, chosen, parts)
        if name == "t5xxl":
            return self._t5(weights, family, component, dtype)
        return self._clip(weights, family, component, dtype, name)

    def _clip(self, weights, family: str, component: str, dtype: torch.dtype, name: str):
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        weights = {(k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k): v
                   for k, v in weights.items()}
        if "text_model.embeddings.token_embedding.weight" not in weights:
            raise CheckpointError(f"the {COMPONENT_LABELS[name]} file holds no CLIP text encoder weights",
                                  field="text_encoders")
        config = CLIPTextConfig.from_dict(clip_config(weights, family, component))
        cls = CLIPTextModelWithProjection if family == "sd3" else CLIPTextModel
        with self.construction.building():
            from accelerate import init_empty_weights

            with init_empty_weights():
                model = cls(config)
        if not any(key.startswith("text_model.") for key in model.state_dict()):
            weights = {key.removeprefix("text_model."): value for key, value in weights.items()}
        weights = {key: value for key, value in weights.items() if key in model.state_dict()}  # position_ids & co.
        from backend.models.loader import materialise

        return tie_and_eval(materialise(model, weights, dtype, COMPONENT_LABELS[name]))

    def _t5(self, weights, family: str, component: str, dtype: torch.dtype):
        from accelerate import init_empty_weights
        from transformers import T5Config, T5EncoderModel

        from backend.models.loader import materialise

        weights = t5_names(weights)
        if has_quantized(weights):  # a GGUF T5 (city96's): decoded to the compute precision, see dequantized()
            weights = dequantized(weights, dtype)
        if "shared.weight" not in weights and "encoder.embed_tokens.weight" in weights:
            weights = {**weights, "shared.weight": weights["encoder.embed_tokens.weight"]}
        if "shared.weight" not in weights:
            raise CheckpointError("the T5-XXL text encoder file holds no T5 weights (shared.weight)",
                                  field="text_encoders")
        weights.setdefault("encoder.embed_tokens.weight", weights["shared.weight"])
        config = T5Config.from_dict(t5_config(weights, family, component))
        with self.construction.building(), init_empty_weights():
            model = T5EncoderModel(config)
        expected = model.state_dict()
        weights = {key: value for key, value in weights.items() if key in expected}
        return tie_and_eval(materialise(model, weights, dtype, COMPONENT_LABELS["t5xxl"]))

    def t5_tokenizer(self, encoder):
        """T5's tokenizer from models/text_encoder/t5_tokenizer (tokenizer.json or a saved tokenizer folder)."""
        from transformers import T5TokenizerFast

        folder = self.folders.t5_tokenizer_dir
        if folder is None or not (folder / "tokenizer.json").is_file():
            raise CheckpointError(
                f"no T5 tokenizer found: copy T5's tokenizer.json (the tokenizer_2 folder of a Flux diffusers model, "
                f"or tokenizer_3 of an SD3 one) into {folder or 'models/text_encoder/t5_tokenizer'}",
                field="text_encoders")
        try:
            tokenizer = T5TokenizerFast.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as error:
            raise CheckpointError(f"the T5 tokenizer in {folder} cannot be read: {error}") from error
        vocabulary = encoder.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > vocabulary:
            raise CheckpointError(f"the T5 tokenizer in {folder} has {len(tokenizer)} tokens but the T5 encoder "
                                  f"only {vocabulary}: they do not belong together", field="text_encoders")
        return tokenizer


def family_label(family: str) -> str:
    from backend.core.model_family import FAMILY_LABELS

    return FAMILY_LABELS.get(family, family)
