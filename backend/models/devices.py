"""Device, precision and attention choices."""
from __future__ import annotations

import gc
import importlib.util
import logging

import torch

log = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def choose_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is available to this PyTorch build; use --device cpu or auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps: Apple MPS is not available here; use --device cpu or auto")
    if name not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device must be one of auto, cpu, cuda, mps; got {name}")
    return torch.device(name)


def choose_dtype(precision: str, device: torch.device) -> torch.dtype:
    """fp16 on CUDA and MPS, fp32 on the CPU, unless asked otherwise."""
    if precision == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if precision not in DTYPES:
        raise ValueError(f"--precision must be one of auto, fp32, fp16, bf16; got {precision}")
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("--precision fp16 is not supported on the CPU; use fp32 or bf16")
    return DTYPES[precision]


def choose_flow_dtype(precision: str, device: torch.device, dtype: torch.dtype,
                      bf16_supported: bool | None = None) -> torch.dtype:
    """Flux and SD3 under --precision auto: bf16 where the GPU has it, instead of fp16, because their T5 encoder
    and transformer overflow in fp16 (black or noisy images); Forge and diffusers run them in bf16. A precision
    the user chose is kept."""
    if precision != "auto" or dtype != torch.float16 or device.type != "cuda":
        return dtype
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    return torch.bfloat16 if bf16_supported else dtype


def attention_backend(pipeline, want_xformers: bool, device: torch.device) -> str:
    """PyTorch SDPA is diffusers' default; xformers only when asked for and usable. Returns a status line."""
    if not want_xformers:
        return "attention: PyTorch SDPA"
    if importlib.util.find_spec("xformers") is None:
        return "attention: PyTorch SDPA (--xformers was given but xformers is not installed: pip install xformers)"
    if device.type != "cuda":
        return f"attention: PyTorch SDPA (--xformers needs a CUDA GPU; running on {device.type})"
    pipeline.enable_xformers_memory_efficient_attention()
    return "attention: xformers"


def free_accelerator_memory():
    """Collect unreachable tensors, then let the GPU allocator give cached memory back (after dropping models, or
    on out-of-memory). Harmless on the CPU."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif torch.backends.mps.is_available():
        torch.mps.empty_cache()
