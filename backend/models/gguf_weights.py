"""GGUF weight files (city96's Flux/SD3 transformer quantizations, Q8_0, Q5_K, Q4_K ..., as Forge and ComfyUI read
them) through the `gguf` package and diffusers' GGUF quantizer: quantized tensors stay quantized in memory
(GGUFParameter, the file's bytes) and each linear layer dequantizes its weight to the job's precision as it runs.

Sizes are read from the tensors' decoded shapes, never assumed (diffusers' single-file converter hardcodes FLUX.1's
width); the original key layout is converted by flow_layouts as for safetensors files: a fused tensor splits along
its rows, which keeps each row's quantization blocks whole.
"""
from __future__ import annotations

from pathlib import Path

import torch

from backend.models.weight_files import CheckpointError

GGUF_MAGIC = b"GGUF"


def read_gguf(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a GGUF file on the CPU: quantized ones as diffusers' GGUFParameter, F16/F32 as tensors."""
    try:
        import gguf  # noqa: F401  (diffusers reads GGUF with it)
    except ImportError as error:
        raise CheckpointError(f"{path.name} is a GGUF file; reading it needs the gguf package "
                              "(pip install -r requirements.txt)") from error
    from diffusers.models.model_loading_utils import load_gguf_checkpoint

    try:
        return load_gguf_checkpoint(str(path))
    except ValueError as error:
        if "quantization type" in str(error):  # diffusers names the unsupported type and the tensor
            raise CheckpointError(f"{path.name}: {error}".split("\n\n")[0]) from error
        raise CheckpointError(f"{path.name} is not a valid GGUF file: {error}") from error
    except Exception as error:  # the reader's own errors for truncated or corrupt files
        raise CheckpointError(f"{path.name} is not a valid GGUF file: {type(error).__name__}: {error}") from error


def is_quantized(tensor: torch.Tensor) -> bool:
    return hasattr(tensor, "quant_type") and hasattr(tensor, "quant_shape")


def has_quantized(state: dict[str, torch.Tensor]) -> bool:
    return any(is_quantized(tensor) for tensor in state.values())


def logical_view(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state with each quantized tensor replaced by an empty one of its decoded shape (for reading sizes)."""
    return {key: torch.empty(tuple(tensor.quant_shape), device="meta") if is_quantized(tensor) else tensor
            for key, tensor in state.items()}


def load_quantized(model: torch.nn.Module, weights: dict[str, torch.Tensor], dtype: torch.dtype, what: str):
    """Load `weights` (diffusers keys, some quantized) into `model` built on the meta device: its linear layers
    with quantized weights become diffusers' GGUFLinear, computing in `dtype`."""
    from diffusers import GGUFQuantizationConfig
    from diffusers.models.model_loading_utils import load_model_dict_into_meta
    from diffusers.quantizers import DiffusersAutoQuantizer

    expected = model.state_dict()
    missing = [key for key in expected if key not in weights]
    if missing:
        raise CheckpointError(f"{what} weights are incomplete: {len(missing)} tensors missing (first: {missing[0]})")
    quantizer = DiffusersAutoQuantizer.from_config(GGUFQuantizationConfig(compute_dtype=dtype))
    quantizer.preprocess_model(model=model, device_map=None, state_dict=weights, keep_in_fp32_modules=[])
    try:
        load_model_dict_into_meta(model, {key: weights[key] for key in expected}, dtype=dtype,
                                  hf_quantizer=quantizer, device_map={"": torch.device("cpu")})
    except ValueError as error:  # a tensor whose decoded shape is not the model's
        raise CheckpointError(f"{what}: {error}") from error
    quantizer.postprocess_model(model)
    model.hf_quantizer = quantizer
    return model.eval().requires_grad_(False)


# city96's T5 encoder GGUFs name tensors as llama.cpp does; Forge and ComfyUI-GGUF map them back to T5's own names.
# Applied in order, each a plain substring replacement (none creates text a later one matches).
_T5_LLAMA_CPP_NAMES = (
    ("enc.", "encoder."), (".blk.", ".block."), ("token_embd", "shared"), ("output_norm", "final_layer_norm"),
    ("attn_rel_b", "layer.0.SelfAttention.relative_attention_bias"), ("attn_norm", "layer.0.layer_norm"),
    ("attn_q", "layer.0.SelfAttention.q"), ("attn_k", "layer.0.SelfAttention.k"),
    ("attn_v", "layer.0.SelfAttention.v"), ("attn_o", "layer.0.SelfAttention.o"),
    ("ffn_gate", "layer.1.DenseReluDense.wi_0"), ("ffn_up", "layer.1.DenseReluDense.wi_1"),
    ("ffn_down", "layer.1.DenseReluDense.wo"), ("ffn_norm", "layer.1.layer_norm"),
)


def t5_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A T5 encoder's tensors under transformers' names, from llama.cpp's (city96's t5xxl GGUFs) or as they were."""
    if "token_embd.weight" not in state:
        return state
    renamed = {}
    for key, tensor in state.items():
        for old, new in _T5_LLAMA_CPP_NAMES:
            key = key.replace(old, new)
        renamed[key] = tensor
    return renamed


def dequantized(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every quantized tensor decoded to `dtype`, one at a time (the file's bytes are not kept). Used for T5: neither
    diffusers' GGUF quantizer (diffusers models only) nor transformers (it dequantizes GGUF too) keeps a T5 quantized,
    and its token embedding is no linear layer."""
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    return {key: dequantize_gguf_tensor(tensor).to(dtype) if is_quantized(tensor) else tensor
            for key, tensor in state.items()}
