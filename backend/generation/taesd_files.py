"""TAESD decoders as A1111 keeps them: `models/VAE-approx/taesd_decoder.pth` (SD1.x/SD2.x), `taesdxl_decoder.pth`
(SDXL), `taesd3_decoder.pth` (SD3), `taef1_decoder.pth` (Flux): madebyollin's decoder, an nn.Sequential whose
first entry is a parameterless clamp, saved as a plain state dict ("1.weight", "3.conv.0.weight", ...).

diffusers' DecoderTiny (AutoencoderTiny's decoder) is the same network without the clamp entry (it clamps in
`forward`), so the weights load into it with every index one lower. Files are read as weights only.
"""
from __future__ import annotations

from pathlib import Path

import torch

from backend.models.construction import ModelConstruction
from backend.models.weight_files import CheckpointError, read_weights, require_flat_tensors

TAESD_DECODER_FILES = {"sd1": "taesd_decoder.pth", "sd2": "taesd_decoder.pth", "sdxl": "taesdxl_decoder.pth",
                       "sdxl-refiner": "taesdxl_decoder.pth", "sd3": "taesd3_decoder.pth", "flux": "taef1_decoder.pth"}
BLOCKS = (3, 3, 3, 1)  # TAESD's decoder: 3 blocks, upsample, 3, upsample, 3, upsample, 1
WIDTH = 64


def decoder_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A1111/madebyollin keys ("1.weight", optionally under "decoder.") -> DecoderTiny's ("layers.0.weight")."""
    renamed = {}
    for key, value in state.items():
        index, _, rest = key.removeprefix("decoder.").partition(".")
        if not index.isdigit() or int(index) < 1 or not rest:
            raise CheckpointError(f"unexpected tensor {key!r}: not TAESD's decoder layout")
        renamed[f"layers.{int(index) - 1}.{rest}"] = value
    return renamed


def load_taesd_decoder(path: Path, construction: ModelConstruction):
    """A DecoderTiny on the CPU in float32 (eval mode) with the file's weights, or CheckpointError."""
    from diffusers.models.autoencoders.vae import DecoderTiny

    path = Path(path)
    state = read_weights(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path.name} does not hold a dictionary of weights")
    require_flat_tensors(state, path)
    try:
        weights = decoder_keys(state)
        latent_channels = weights["layers.0.weight"].shape[1]
    except (CheckpointError, KeyError) as error:
        raise CheckpointError(f"{path.name} is not a TAESD decoder ({error})") from None
    with construction.building():
        decoder = DecoderTiny(in_channels=latent_channels, out_channels=3, num_blocks=BLOCKS,
                              block_out_channels=(WIDTH,) * len(BLOCKS), upsampling_scaling_factor=2, act_fn="relu",
                              upsample_fn="nearest")
    try:
        decoder.load_state_dict(weights, strict=True)
    except RuntimeError as error:  # missing, unexpected or misshapen tensors
        first_line = str(error).strip().splitlines()[0]
        raise CheckpointError(f"{path.name} does not fit TAESD's decoder: {first_line}") from None
    return decoder.eval().requires_grad_(False)
