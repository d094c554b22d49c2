"""Train the built-in demo model: a tiny latent diffusion model of the shapes world (tools/shapes_world.py)
in Stable Diffusion 1.x's architecture and file format (UNet with cross-attention, AutoencoderKL, CLIP text
encoder with the real CLIP tokenizer). Fixed seeds, CPU only, about 40 minutes on 2 cores. Training is
time-boxed (--vae-minutes, --diffusion-minutes), so the step counts it prints are what reproduces a run.

    python -m tools.train_demo_model --out backend/builtin/shapes-demo.safetensors
"""
from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from backend.clip_tokenizer import build_clip_tokenizer
from backend.original_layout import SD1_CLIP_PREFIX, clip_to_original, unet_to_original, vae_to_original
from tools.shapes_world import random_scene, render

SD_LATENT_SCALE = 0.18215  # SD1.x's VAE scaling factor, which the loader assumes for this family
CHECKPOINT_METADATA = {  # ModelSpec keys, so other tools know what this is and at which size it was trained
    "modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": "stable-diffusion-v1",
    "modelspec.title": "Shapes demo", "modelspec.resolution": "64x64",
    "modelspec.description": "A tiny latent diffusion model of a world of coloured shapes (trained by "
                             "tools/train_demo_model.py); a demo, not a general model",
}


def make_dataset(count: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    rng = random.Random(seed)
    images, captions = [], []
    for _ in range(count):
        scene = random_scene(rng)
        images.append(np.asarray(render(scene, rng)))
        captions.append(scene.caption)
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return pixels, captions


def build_models():
    vae = AutoencoderKL(block_out_channels=(32, 32, 64, 64), layers_per_block=1, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                        norm_num_groups=32, sample_size=64)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=1,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=64))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(64, 128), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=64,
        attention_head_dim=8, norm_num_groups=32)
    return vae, text_encoder, unet


def train_vae(vae: AutoencoderKL, pixels: torch.Tensor, minutes: float, log_every: int = 50):
    """Mostly on random 32x32 crops (more, cheaper examples per second), then on whole 64x64 images so
    the network settles at the size it will decode."""
    optimiser = torch.optim.AdamW(vae.parameters(), lr=3e-3, betas=(0.9, 0.99))
    generator = torch.Generator().manual_seed(1)
    started, step = time.monotonic(), 0
    while (elapsed := time.monotonic() - started) < minutes * 60:
        whole = elapsed > minutes * 60 * 0.7
        batch, crop = (12, 64) if whole else (32, 32)
        if whole:
            for group in optimiser.param_groups:
                group["lr"] = 1e-3
        index = torch.randint(0, len(pixels), (batch,), generator=generator)
        x = pixels[index]
        if crop < x.shape[-1]:
            left, top = torch.randint(0, x.shape[-1] - crop + 1, (2,), generator=generator).tolist()
            x = x[:, :, top:top + crop, left:left + crop]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        loss = F.mse_loss(vae.decode(z).sample, x) + 1e-6 * posterior.kl().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        step += 1
        if step % log_every == 0:
            print(f"vae step {step} ({'64px' if whole else '32px crops'}) loss {loss.item():.4f} "
                  f"({time.monotonic() - started:.0f}s)", flush=True)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        check = pixels[:128]
        error = F.mse_loss(vae.decode(vae.encode(check).latent_dist.mean).sample, check).item()
    print(f"vae reconstruction mse on whole images {error:.4f}", flush=True)
    return vae


@torch.no_grad()
def normalise_latent_scale(vae: AutoencoderKL, pixels: torch.Tensor):
    """Rescale the latent space (exactly: quant_conv mean rows up, post_quant_conv columns down) so that
    latents x 0.18215 have unit standard deviation, as the diffusion schedule expects."""
    means = torch.cat([vae.encode(pixels[i:i + 256]).latent_dist.mean for i in range(0, 2048, 256)])
    factor = (1 / SD_LATENT_SCALE) / means.std().item()
    channels = vae.config.latent_channels
    vae.quant_conv.weight[:channels] *= factor
    vae.quant_conv.bias[:channels] *= factor
    vae.quant_conv.bias[channels:] += 2 * np.log(factor)  # log-variance follows the scale
    vae.post_quant_conv.weight /= factor
    print(f"latent scale factor {factor:.3f}", flush=True)


@torch.no_grad()
def encode_all(vae: AutoencoderKL, pixels: torch.Tensor) -> torch.Tensor:
    return torch.cat([vae.encode(pixels[i:i + 256]).latent_dist.mean for i in range(0, len(pixels), 256)]) \
        * SD_LATENT_SCALE


def train_diffusion(unet, text_encoder, latents, captions, minutes: float, batch: int = 128, log_every: int = 50):
    tokenizer = build_clip_tokenizer()
    ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    empty = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear")
    alphas = scheduler.alphas_cumprod
    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    optimiser = torch.optim.AdamW(parameters, lr=6e-4, weight_decay=0.01)
    ema = [p.detach().clone() for p in parameters]
    generator = torch.Generator().manual_seed(2)
    started, step = time.monotonic(), 0
    unet.train()
    text_encoder.train()
    while time.monotonic() - started < minutes * 60:
        index = torch.randint(0, len(latents), (batch,), generator=generator)
        x0 = latents[index]
        tokens = ids[index].clone()
        drop = torch.rand(batch, generator=generator) < 0.1  # unconditional examples for classifier-free guidance
        tokens[drop] = empty
        t = torch.randint(0, 1000, (batch,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        context = text_encoder(tokens).last_hidden_state
        loss = F.mse_loss(unet(noisy, t, encoder_hidden_states=context).sample, noise)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimiser.step()
        step += 1
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for average, parameter in zip(ema, parameters):
                average.lerp_(parameter, 1 - decay)
        if step % log_every == 0:
            print(f"diffusion step {step} loss {loss.item():.4f} ({time.monotonic() - started:.0f}s)", flush=True)
    with torch.no_grad():
        for average, parameter in zip(ema, parameters):
            parameter.copy_(average)
    return unet.eval().requires_grad_(False), text_encoder.eval().requires_grad_(False)


def save_checkpoint(path: Path, vae, text_encoder, unet):
    state = {**unet_to_original(unet), **vae_to_original(vae), **clip_to_original(text_encoder, SD1_CLIP_PREFIX)}
    state = {key: value.detach().to(torch.float16).contiguous() for key, value in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=CHECKPOINT_METADATA)
    print(f"saved {path} ({path.stat().st_size / 1e6:.1f} MB)", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("backend/builtin/shapes-demo.safetensors"))
    parser.add_argument("--images", type=int, default=30000)
    parser.add_argument("--vae-minutes", type=float, default=7)
    parser.add_argument("--diffusion-minutes", type=float, default=30)
    parser.add_argument("--resume", type=Path, default=None,
                        help="continue the diffusion training of this checkpoint (its VAE is kept as it is)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    pixels, captions = make_dataset(args.images, seed=0)
    print(f"dataset: {len(captions)} images, e.g. {captions[:3]}", flush=True)
    if args.resume:
        from backend.checkpoint_loader import CheckpointLoader

        pipeline = CheckpointLoader().load(args.resume, torch.float32).pipeline
        vae, text_encoder, unet = pipeline.vae, pipeline.text_encoder, pipeline.unet
        text_encoder.requires_grad_(True)
        unet.requires_grad_(True)
    else:
        vae, text_encoder, unet = build_models()
        vae = train_vae(vae, pixels, args.vae_minutes)
        normalise_latent_scale(vae, pixels)
    print(f"parameters: unet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M, "
          f"text {sum(p.numel() for p in text_encoder.parameters()) / 1e6:.2f}M, "
          f"vae {sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M", flush=True)
    latents = encode_all(vae, pixels)
    print(f"latents {tuple(latents.shape)} std {latents.std():.3f}", flush=True)
    unet, text_encoder = train_diffusion(unet, text_encoder, latents, captions, args.diffusion_minutes)
    save_checkpoint(args.out, vae, text_encoder, unet)


if __name__ == "__main__":
    main()
