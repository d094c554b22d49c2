"""Train the built-in demo model: a tiny latent diffusion model of the shapes world (tools/shapes_world.py)
in Stable Diffusion 1.x's architecture and file format (UNet with cross-attention, AutoencoderKL, CLIP text
encoder with the real CLIP tokenizer). Fixed seeds and step counts, on the CPU (`--device cuda` for a GPU).

    python -m tools.train_demo_model        # writes backend/models/builtin/shapes-demo.safetensors

is the whole recipe: the dataset (30,000 captioned images, see make_dataset), the autoencoder (1600 steps),
encoding the images once, then the eight diffusion stages of SHIPPED_RECIPE (2320 steps) and an average of two of
their checkpoints. It took 57.9 min as one command on the 2-core build machine (an AMD EPYC, 2026-11-27): the
autoencoder 10.5 min, the diffusion stages 43.8 min (1.0-1.2 s a step at batch 128, less with the text encoder
frozen), the dataset, encoding and saving the rest; the file it wrote is the one shipped, tensor for tensor. In
the dataset 35% of the images show two objects, one on the left and one on the right, at the default size, and 80%
of those are captioned with one of their objects only, its loss on its half: that is what teaches inpainting
(below).

1. 1100 steps over all noise levels at peak 1.2e-3 with the caption-fact heads on the text encoder, offset
   noise, and the noisiest steps' loss weighted up (capped at 3): the model learns the layout, what goes where
   in which colours, from the prompt, but draws pinched squares and triangles and stars as blobs. Its text
   encoder carries every fact (tools/probe_text_encoder.py).
2. 560 steps on t 200-700 at 5e-4, plain weights: the shapes come back.
3. 170 steps on the least noisy levels (t <= 300) at 3e-4: clean edges.
4. 200 steps like stage 1 but on t 400-999 only, at 3e-4, with the text encoder frozen: with this many
   two-object images, stages 1-3 left "large" objects middle-sized; this draws them large.
5. 60 steps on t <= 300 at 3e-4: clean edges again (and shapes: 74.6% after stage 6 with it, 69.6% without).
6. 100 steps on t <= 300 at 1e-4 with 15% of the captions swapped for other images' and the text encoder
   frozen, so that low-strength img2img keeps what the image shows when the prompt says otherwise (trained on
   matching captions only, the model follows such a prompt even at the last steps and returns noise). Frozen,
   the encoder cannot learn the wrong captions (unfrozen, position fell to 41% and background to 72% in 150
   steps of an earlier recipe). But it mixes a second colour into some objects ("a large green square", seed
   4: a green square with a purple half, 36% green; the demo test wants 60%).
7. 80 steps like stage 4 at 1e-4 with a third of its offset noise (0.1): the colours, decided where the layout
   is, unmix (that square over 90% green, after stage 8 too). But the circles turn lumpy (after stage 8, "a
   red circle on a blue background" is read as a star in 6 of 6 seeds; 3 of 6 after stage 6), and offset
   noise costs img2img: the model learns to remove an offset that a noised input image does not have, and
   tints its background.
8. 50 steps like stage 6: low-strength img2img keeps the layout again.

The model kept is the even average of the weights after stage 6 and after stage 8 (both of one model: half of
what stages 7 and 8 changed; Recipe.average_with_stage): the square 66% green, the red circle a circle in 4 of
6 seeds, inpainting, the star and low-strength img2img pass. Averaged at 35% of that change the square fell
just under the test (59.8% green); at 65% all passed; at 80% two circle tests failed. Inpainting's seed 2 sits
near the test's threshold in every model of this family (15.1-15.4% green where the test wants 15%).

Scores (python -m tools.evaluate_demo_model: 120 captions x 2 seeds, DPM++ 2M, CFG 7), colour / background /
shape / position: 98.3 / 100 / 73.8 / 99.1% (circles 45 of 60, squares 35, triangles 52, stars 45).

How it was found. Before it, the shipped model was made as five commands, each resuming from the file the one
before saved (53 + 13 + 15 + 9 + 8 min = 98 min; about 86-95 min as one command), with small two-object
objects and no partial captions ("stage N" from here on means that model's stages unless a recipe says its
own):

1. 2000 steps over all noise levels with the caption-fact heads on the text encoder, offset noise, and the
   noisiest steps' loss weighted up (capped at 3): the model learns the layout, what goes where in which
   colours, from the prompt. It loses the shapes, though (pinched squares and triangles, stars as blobs). Its
   text encoder carries every fact (tools/probe_text_encoder.py), so the UNet loses them, in the middle noise
   levels (img2img from a true drawing keeps the shape at strength 0.3, not at 0.6).
2. and 3. 450 steps on t 250-650, then 600 on t 200-700, at plain weights: the shapes come back.
4. 300 steps on the least noisy levels (t <= 300): clean edges.
5. 300 more on t <= 300 with 30% of the captions swapped for other images' and the text encoder frozen, so that
   low-strength img2img keeps what the image shows when the prompt says otherwise (trained on matching
   captions only, the model follows such a prompt even at the last steps and returns noise). Frozen, the
   encoder cannot learn the wrong captions (unfrozen, position fell to 41% and background to 72% in 150 steps).

Scores after each stage (python -m tools.evaluate_demo_model: 120 captions x 2 seeds, DPM++ 2M, CFG 7),
colour / background / shape / position: 94.2 / 100 / 53.8 / 98.6%, 97.9 / 100 / 67.5 / 98.6%,
98.8 / 100 / 72.9 / 99.5%, 99.6 / 100 / 85.0 / 96.3%, then that model's 94.2 / 100 / 77.5 / 94.9%.
Stage 4's model scores best but fails low-strength img2img; with 10% swapped captions instead of stage 4 and 5
(90 min) a test prompt ("a red circle on a blue background") came out as a circle in only 2 of 6 seeds.

Shorter recipes (one command each) that missed the shape bar: stage 1 for 1400 steps, 500 on t 200-700, then
stage 5 with 10% swapped (60 min): 97.1 / 100 / 52.5 / 94.0%; with 500 more steps on t 200-700 before the last
stage (77 min): 96.7 / 100 / 62.1 / 94.9%. Its stages at batch 64 instead of 128 (stages 2 and 3 at 600
and 750 steps): 95.8 / 97.5 / 66.2 / 88.9% in 70 min, because a step at half the batch costs 0.6-0.75 s, not half
of 1.2 s, and the shapes came back more slowly (stage 1 alone: 38% shape in the quick check, 64 captions).

Closest yet, 57.0 min as one command (2-core AMD EPYC, 1.32 s a step): twice the learning rates on ~55% of the
steps, 1100 steps like stage 1 at peak 1.2e-3, 560 on t 200-700 at 5e-4, 170 on t <= 300 at 3e-4, then 170 on
t <= 300 at 3e-4 with 30% swapped captions and the encoder frozen. Per stage: 93.8 / 100 / 45.8 / 95.4%,
98.3 / 100 / 67.5 / 97.7%, 97.9 / 100 / 80.8 / 95.8% (53.5 min: shapes better than that model's), then
95.0 / 100 / 64.2 / 93.1%; the last stage at 1.5e-4 instead gave 67.1% shape and kept low-strength img2img. But
inpainting fails with every stage of that run (the masked half stays white: no green square beside the red
circle), as does the "big white star" prompt, so the shorter first stage loses something the evaluation's
single-object captions do not measure; that model passed both.

A run with that first stage at 1300 steps was stopped at step 800 for the next trial: its snapshot at step 700
already drew a good star but left the masked half blank in 6 of 6 seeds (so 1300 steps are untested). With
`--partial-captions 0.5` (half the two-object scenes captioned with one object, loss on its half; 59.7 min as
one command: 1100 steps like stage 1 at 1.2e-3, 560 on t 200-700 at 5e-4, then 340 on t <= 300 at 3e-4 with
20% swapped captions and the encoder frozen) the model learned to draw something in the masked half, but not
in the prompt's colour: blank after stage 1, a faint yellowish square after stage 2, and at the end a square
in 4 of 6 seeds whose colours mix the prompt's green with the red of the circle beside it (fails the test).
Prompted with both objects ("a red circle on the left and a green square on the right") it drew a small *red*
square: the new object takes the colour of the one already there. Scores after stage 2 (70.8% shape, but
img2img not yet kept) and at the end: 99.6 / 100 / 70.8 / 99.1% and 95.0 / 99.6 / 64.6 / 95.4%; the swapped
captions on t <= 300 cost shapes here too. At the end low-strength img2img kept the layout; the "big white
star" came out purple in 2 of 6 seeds.
Closer (~60 min by its parts, run as `--resume` stages on that run's stage-2 file, partial captions
0.5): after stage 2, 170 steps on t <= 300 at 3e-4, then 170 on t <= 300 at 1e-4 with 15% swapped captions and
the encoder frozen: 97.1 / 99.6 / 70.0 / 91.2%, the star and low-strength img2img pass, and inpainting draws a
green square (with red flecks) in the masked half, but passes the test's thresholds in only 2 of 6 seeds (0 of
6 before the swapped-caption stage). With 30% swapped instead: 95.8 / 96.2 / 62.9 / 89.4%, inpainting 2 of 6.
Those four stages as one command (1100 steps like stage 1 at 1.2e-3; 560 on t 200-700 at 5e-4; 170 on t <= 300
at 3e-4; 170 on t <= 300 at 1e-4 with 15% swapped, encoder frozen), 2-core AMD EPYC, 1.37 s a step:
- `--partial-captions 0.8`, 59.1 min: 98.8 / 100 / 73.3 / 98.6%, star and low-strength img2img pass, but
  inpainting fails 6 of 6: a *small* muddy green-brown square on the right (the partial captions' objects are
  small, and the test's threshold wants the default size's area).
- `--partial-captions 0.8 --two-objects-at-default-size`, 59.7 min: 98.3 / 98.3 / 75.4 / 99.5% (squares 40/60),
  low-strength img2img passes, the star in 5 of 6 seeds, and inpainting draws a green square of the right size
  in the masked half in 6 of 6 seeds, but with reddish-brown edges next to the red circle: red over 2% of the
  masked region in seeds 2, 3 and 4 (3.3, 4.4, 3.7%), so the test fails. Prompted with both objects, its colours
  bleed between them too (a blue-and-red circle beside the blue square in 3 of 4 seeds).
  170 more steps of its last stage (`--resume`) left the red edges as they were (inpainting 3 of 6 again).

Screened on a GPU next (`--device cuda`: six one-command runs side by side, ~6 min each, scored on 40 captions x
2 seeds, so shape +-5%; the GPU's rounding alone moves a result far, so it only ranks recipes): the recipe just
above passed inpainting in 6 of 6 seeds there (3 of 6 on the CPU); with 35% of the images two-object scenes
(`--two-object-share 0.35`) 6 of 6 with the least red; a longer stage 2 taken from stage 1 (900 + 760) 4 of 6;
a longer stage 1 (1300 + 360) 5 of 6; every two-object scene partially captioned 3 of 6; 600 fewer autoencoder
steps for 165 more of stage 2, 2 of 6 (its autoencoder read back 67% of shapes against 83-90%).
Then on the CPU, with `--partial-captions 0.8 --two-objects-at-default-size --two-object-share 0.35`:
- the four stages above, 55.6 min as one command: 95.0 / 100 / 70.4 / 96.3%, inpainting 6 of 6 (a green square
  on the right, red under 0.3%), the star 6 of 6, low-strength img2img 3 of 3; but "large" objects come out
  middle-sized ("blue background with a large red disc at the lower left": a small blob the detector reads as
  a star in 5 of 6 seeds) and "a large green square" (seed 4) green mixed with purple: two demo tests fail.
- then 200 steps like stage 1 on t 400-999 only (3e-4, encoder frozen): big discs and clean squares, but
  low-strength img2img lost (0 of 3) and inpainting 4 of 6.
- that stage before the last one instead (1100; 560; 170; 200 on t 400-999; 170 swapped; ~59.8 min): inpainting,
  the star and img2img all pass, the disc is a circle in 5 of 6 seeds, every large square but one is its colour:
  the green one of seed 4 stays mostly purple (green over 28% of it; the test wants 60%). With 8% swapped
  instead of 15%, 10%; with the swapped stage on t <= 200, 42%.
- and with the swapped stage cut to 100 steps (~58.3 min): 97.1 / 100 / 69.6 / 98.6% (circles 42/60, squares
  32/60), inpainting, the star and img2img pass, every large square is its colour (the green one 64%), but
  "a red circle on a blue background" is a circle in 1 of 6 seeds (stars and squares otherwise): one demo test
  fails, and shape is 0.4 points under the bar. These continued the 55.6-min run's stage files
  (`--resume`, or a script calling the same functions), exactly as the one command continues a stage.
- and 1100; 560; 170; 200 on t 400-999; 60 on t <= 300 at 3e-4; 100 swapped (~59.6 min): 96.2 / 100 / 74.6 /
  100%, every bar met, inpainting 5 of 6 (seeds 1-3 pass), the star and img2img pass, the disc a circle in 5 of
  6, but the large green square of seed 4 is 36% green again: one demo test fails. The closest yet.
- Variations on that closest run, continuing its stage files (each a script calling the same functions, as the
  one command continues a stage), checked on the demo tests' prompts (the six large squares' colours, the
  "large red disc" and "red circle" shapes, inpainting, low-strength img2img). Without its swapped stage (~57.8
  min) every large square is its colour (the green one 74%), but img2img fills the picture with green noise (0
  of 3): the swapped captions are what keep it. That stage with 10%, 12% or 20% swapped, at 5e-5 or 1.2e-4, on
  t <= 200 or t <= 400, for 70 steps, or for 50 at 25%: seed 4's square 17-58% green every time (the test wants
  60%), and img2img lost in three of them; 30 plain steps after it: 18%.
  So the colour was mended at the noisy levels after it: 40-80 more steps like stage 4 at 1e-4 (t 400-999,
  encoder frozen) make that square 90-95% green, but their offset noise tints low-strength img2img's white
  background pink, purple to the detector (lost at offset 0.3 for 60 steps, 0.2 and 0.1 for 80; without
  offset the square stayed 47% green), and 40-50 swapped steps after them bring img2img back (3 of 3, the square
  still 90-94% green). With 80 such steps at offset 0.1, then 50 swapped (~62 min: 1100; 560; 170; 200 on t
  400-999; 60; 100 swapped; 80 on t 400-999; 50 swapped), every demo test passes but one: "a red circle on a
  blue background" comes out as a lumpy disc the detector reads as a star in 6 of 6 seeds (3 of 6 before those
  two stages). Starting those 80 steps at t 500 or 600 left the same (0 of 6); at 5e-5 instead of 1e-4 the
  circles came back (3 of 6; 2 at 7e-5) but the inpainted green square shrank under the test's 15% of the
  masked half in seed 2 (14.3%; 14.8% at 7e-5); with 40 swapped steps, seed 2 sat at the threshold too (just
  under 15%; 15.1% without the 60 plain steps, whose run lost the circles). No variation passed all;
  the average of that run and its stage-6 file did: the recipe above. The times "by parts" here added measured
  step costs to an earlier run's; that recipe as one command took 57.9 min, not ~62, on a machine less loaded.

`--recipe flags` runs one stage made of the command-line options instead (with `--resume`, on top of a
checkpoint), for experiments. For the record, the first shipped model (plain loss, then offset noise; 77 min)
drew shapes well (72.1% before the detector's corner test) but ignored positions (12.0%): its encoder never
learned them. What did not help the shapes (scores before the corner test, which counts squares with bowed-in
sides): a loss-weight cap of 10 instead of 3 (45.8%); more examples from t >= 800 instead of a cap (44%);
weighting only the first 800 steps (38%); DDPM-IP input perturbation (52%); SD1's attention at the 16x16 level
too (2.3x the step time); guidance 1 for the first 2-6 of 20 sampling steps (55-58%: the noisiest steps are not
where the shapes go wrong); teaching the first shipped model positions with stage 1's options (27% after 600
steps). Stochastic samplers draw better shapes from stage 1 alone (Euler a 61%); the evaluation uses the app's
default sampler.
"""
from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

from backend.models.devices import choose_device
from backend.models.original_layout import SD1_CLIP_PREFIX, clip_to_original, unet_to_original, vae_to_original
from backend.models.tokenizer import build_clip_tokenizer
from tools.shapes_world import COLOURS, POSITIONS, SHAPES, ShapeSpec, describe, detect, random_scene, render

SD_LATENT_SCALE = 0.18215  # SD1.x's VAE scaling factor, which the loader assumes for this family
CHECKPOINT_METADATA = {  # ModelSpec keys, so other tools know what this is and at which size it was trained
    "modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": "stable-diffusion-v1",
    "modelspec.title": "Shapes demo", "modelspec.resolution": "64x64",
    "modelspec.description": "A tiny latent diffusion model of a world of coloured shapes (trained by "
                             "tools/train_demo_model.py); a demo, not a general model",
}


FACT_CLASSES = {"position": [*POSITIONS, None], "colour": list(COLOURS), "shape": list(SHAPES),
                "background": list(COLOURS)}


def object_facts(spec: ShapeSpec, background: str) -> list[int]:
    """Class indices of the object's position (None: not stated), colour and shape, and the background."""
    values = {"position": spec.position, "colour": spec.colour, "shape": spec.shape, "background": background}
    return [FACT_CLASSES[fact].index(values[fact]) for fact in FACT_CLASSES]


WHOLE, LEFT_HALF, RIGHT_HALF = 0, 1, 2  # where an example's loss counts (see loss_region)


def make_dataset(count: int, seed: int, partial_share: float = 0.0, two_object_size: str | None = "small",
                 two_object_share: float = 0.2) -> tuple[torch.Tensor, list[str], torch.Tensor, torch.Tensor]:
    """Images (in -1..1), captions, the facts of the object each caption describes first, and which part of each
    image its loss counts on.

    `partial_share` of the two-object scenes are captioned with one of their objects only (as an inpainting
    prompt names only what goes in the mask) and their loss counts only on that object's half: the model learns
    to draw what the prompt names beside something it does not mention, not to add unmentioned objects (without
    these, a model drew nothing in a masked half beside an existing object). Their wording comes from a random
    stream of its own, so the images and the other captions do not depend on the share. The shipped model was
    trained with 0.8 (the one before it without them; trials are in the module's docstring). `two_object_size`
    is the size of both objects of a two-object scene and `two_object_share` the share of such scenes (see
    random_scene)."""
    rng, wording = random.Random(seed), random.Random(seed + 1)
    images, captions, facts, halves = [], [], [], []
    for _ in range(count):
        scene = random_scene(rng, two_object_size, two_object_share)
        images.append(np.asarray(render(scene, rng)))
        if len(scene.objects) == 2 and wording.random() < partial_share:
            side = wording.randrange(2)  # the objects are on the left and the right (see random_scene)
            spec = scene.objects[side]
            captions.append(describe(spec, scene.background, wording))
            halves.append((LEFT_HALF, RIGHT_HALF)[side])
        else:
            spec = scene.objects[0]
            captions.append(scene.caption)
            halves.append(WHOLE)
        facts.append(object_facts(spec, scene.background))
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return pixels, captions, torch.tensor(facts), torch.tensor(halves)


def loss_region(halves: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(batch, 1, height, width): 1 where each example's loss counts, the whole latent or one half of it."""
    left = torch.arange(width) < width // 2
    keep = torch.ones(len(halves), width, dtype=torch.bool)
    keep[halves == LEFT_HALF] = left
    keep[halves == RIGHT_HALF] = ~left
    return keep[:, None, None, :].expand(-1, 1, height, width).float()


def build_models():
    """SD1.x's component classes at toy widths. The autoencoder downsamples 4x (like LDM's kl-f4 models)
    rather than SD's 8x: at 64x64 an 8x latent is 8x8, too coarse to keep a small star from becoming a blob."""
    vae = AutoencoderKL(block_out_channels=(32, 64, 64), layers_per_block=1, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
                        norm_num_groups=32, sample_size=64)
    with torch.no_grad():  # start nearly deterministic: the tiny KL weight would take long to shrink unit noise
        vae.quant_conv.bias[vae.config.latent_channels:] = -8.0
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=1,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=64))
    # No attention at the 16x16 level (as SDXL's first level): SD1's attention there costs 2.3x the step time
    # and did not make positions or shapes better.
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64, 128), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
        attention_head_dim=8, norm_num_groups=32)
    return vae, text_encoder, unet


def swap_weights(first: list[torch.Tensor], second: list[torch.Tensor]):
    """Exchange two lists of parameters' tensors in place: the EMA average in (to save or sample), then back."""
    with torch.no_grad():
        for one, other in zip(first, second):
            one.data, other.data = other.data, one.data


def cosine_lr(optimiser, peak: float, step: int, total: int, warmup: int = 100):
    """Linear warm-up, then cosine decay to a tenth of the peak by the last step."""
    if step < warmup:
        rate = peak * (step + 1) / warmup
    else:
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        rate = peak * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * progress)))
    for group in optimiser.param_groups:
        group["lr"] = rate


def train_vae(vae: AutoencoderKL, pixels: torch.Tensor, steps: int, log_every: int = 100):
    """First on random 32x32 crops (more, cheaper examples per second), then on whole 64x64 images so
    the network settles at the size it will decode. L1 + MSE: L1 keeps the shapes' edges sharp."""
    optimiser = torch.optim.AdamW(vae.parameters(), lr=2e-3, betas=(0.9, 0.99))
    generator = torch.Generator().manual_seed(1)
    started = time.monotonic()
    for step in range(steps):
        cosine_lr(optimiser, 2e-3, step, steps)
        whole = step >= steps * 0.6
        batch, crop = (12, 64) if whole else (32, 32)
        index = torch.randint(0, len(pixels), (batch,), generator=generator)
        x = pixels[index].to(vae.device)
        if crop < x.shape[-1]:
            left, top = torch.randint(0, x.shape[-1] - crop + 1, (2,), generator=generator).tolist()
            x = x[:, :, top:top + crop, left:left + crop]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(vae.device)
        decoded = vae.decode(z).sample
        loss = F.l1_loss(decoded, x) + F.mse_loss(decoded, x) + 1e-6 * posterior.kl().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if (step + 1) % log_every == 0:
            print(f"vae step {step + 1}/{steps} ({'64px' if whole else '32px crops'}) loss {loss.item():.4f} "
                  f"({time.monotonic() - started:.0f}s)", flush=True)
    vae.eval().requires_grad_(False)
    report_reconstruction(vae)
    return vae


@torch.no_grad()
def report_reconstruction(vae: AutoencoderKL, count: int = 200):
    """How well the detector reads shapes and colours back from the autoencoder alone: an upper bound for
    what the diffusion model can reach."""
    rng = random.Random(123)
    scenes = [scene for scene in (random_scene(rng) for _ in range(count)) if len(scene.objects) == 1]
    images = [render(scene, rng) for scene in scenes]
    pixels = torch.from_numpy(np.stack([np.asarray(image) for image in images])).permute(0, 3, 1, 2).float() / 127.5 - 1
    decoded = vae.decode(vae.encode(pixels.to(vae.device)).latent_dist.mean).sample
    decoded = ((decoded.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    found = [detect(Image.fromarray(array)) for array in decoded]
    shape = np.mean([f.shape == s.objects[0].shape for f, s in zip(found, scenes)])
    colour = np.mean([f.colour == s.objects[0].colour for f, s in zip(found, scenes)])
    print(f"vae reconstruction read back by the detector: shape {shape:.1%}, colour {colour:.1%} "
          f"({len(scenes)} images)", flush=True)


@torch.no_grad()
def normalise_latent_scale(vae: AutoencoderKL, pixels: torch.Tensor):
    """Rescale the latent space (exactly: quant_conv mean rows up, post_quant_conv columns down) so that
    latents x 0.18215 have unit standard deviation, as the diffusion schedule expects."""
    means = torch.cat([vae.encode(pixels[i:i + 256].to(vae.device)).latent_dist.mean
                       for i in range(0, min(2048, len(pixels)), 256)])
    factor = (1 / SD_LATENT_SCALE) / means.std().item()
    channels = vae.config.latent_channels
    vae.quant_conv.weight[:channels] *= factor
    vae.quant_conv.bias[:channels] *= factor
    vae.quant_conv.bias[channels:] += 2 * np.log(factor)  # log-variance follows the scale
    vae.post_quant_conv.weight /= factor
    print(f"latent scale factor {factor:.3f}", flush=True)


@torch.no_grad()
def round_to_stored_precision(module: torch.nn.Module) -> torch.nn.Module:
    """The weights as the checkpoint stores them (float16), so that the diffusion stages train on the latents of
    the autoencoder that ships, and a stage reloaded from the file before it sees the very same latents."""
    for parameter in module.parameters():
        parameter.copy_(parameter.half().float())
    return module


@torch.no_grad()
def encode_all(vae: AutoencoderKL, pixels: torch.Tensor) -> torch.Tensor:
    """The scaled latents of every image, kept in main memory (each training batch moves to the device)."""
    return torch.cat([vae.encode(pixels[i:i + 256].to(vae.device)).latent_dist.mean.cpu()
                      for i in range(0, len(pixels), 256)]) * SD_LATENT_SCALE


def offset_noise(shape, generator: torch.Generator, strength: float) -> torch.Tensor:
    """A random per-channel offset to add to the white noise (one value per image and channel).

    A 16x16 latent averages white noise over few positions, so on SD's schedule the background colour still
    shows through at the last timestep; a model trained on white noise learns to read it from there and,
    sampling from pure noise, then lets the seed choose it instead of the prompt. The offset hides it."""
    return strength * torch.randn((shape[0], shape[1], 1, 1), generator=generator)


def sd_alphas_cumprod() -> torch.Tensor:
    """Stable Diffusion 1.x's training noise schedule (what the app's samplers assume for this family)."""
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear").alphas_cumprod


def training_timesteps(batch: int, generator: torch.Generator, first: int = 0, last: int = 999) -> torch.Tensor:
    """Uniform over SD's steps `first`..`last`."""
    return torch.randint(first, last + 1, (batch,), generator=generator)


def mismatch_captions(tokens: torch.Tensor, all_ids: torch.Tensor, share: float,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """About `share` of the batch's captions replaced by random captions of other images, so the model learns
    to denoise from what the image shows when the prompt says otherwise (low-strength img2img). Returns the
    captions and which were swapped (in place: `tokens` is the batch's own copy)."""
    swap = torch.rand(len(tokens), generator=generator) < share
    tokens[swap] = all_ids[torch.randint(0, len(all_ids), (int(swap.sum()),), generator=generator)]
    return tokens, swap


def noisy_step_weight(alpha_cumprod: torch.Tensor, cap: float) -> torch.Tensor:
    """Loss weight (1 - a) / a between 1 and `cap`: at the noisy steps the noise error then counts like the
    error of the predicted clean latent. Plain noise MSE hardly cares there (an object in the wrong place
    costs a / (1 - a) of its error, 0.005 at t=999), yet that is where the sampler decides the layout."""
    return ((1 - alpha_cumprod) / alpha_cumprod).clamp(1.0, max(1.0, cap))


@dataclass(frozen=True)
class DiffusionStage:
    """One stage of diffusion training: its length and learning rate, and which noise levels, loss weights and
    captions it trains on (see train_diffusion for what each option does)."""
    steps: int = 2000
    peak_lr: float = 6e-4
    batch: int = 128
    offset_noise: float = 0.0
    fact_weight: float = 0.0
    max_loss_weight: float = 1.0
    first_timestep: int = 0
    last_timestep: int = 999
    mismatched_captions: float = 0.0
    train_text_encoder: bool = True


def train_diffusion(unet, text_encoder, latents, captions, stage: DiffusionStage, facts: torch.Tensor | None = None,
                    halves: torch.Tensor | None = None, snapshot=None, snapshot_every: int = 0, log_every: int = 50):
    """Epsilon prediction on SD's noise schedule; the text encoder trains too (it starts from nothing). The
    weights kept are an exponential moving average; `snapshot(unet, text_encoder, step)` is called with the
    averaged weights every `snapshot_every` steps so a long run can be checked while it goes.

    `offset_noise` adds a per-channel offset to the noise (see `offset_noise`) so that the prompt, not the seed,
    decides the background.

    `fact_weight` adds linear heads on the text encoder's pooled output that predict each caption's facts
    (`facts`, see object_facts): a jointly trained encoder otherwise never learned to encode positions (the
    probe in tools/probe_text_encoder.py), so the UNet had nothing to follow. The heads are not saved.

    `max_loss_weight` > 1 weights each example's noise error by (1 - a) / a up to that cap, i.e. like the error
    of the predicted clean latent at the noisy timesteps.

    `first_timestep`..`last_timestep` limits training to one band of noise levels; `mismatched_captions` gives
    that share of the examples another image's caption (for a stage on the least noisy steps, where img2img
    must keep what the image shows even when the prompt says otherwise); `train_text_encoder=False` keeps the
    encoder as it is (so such a stage cannot teach it the wrong captions).

    `halves` (see make_dataset) limits an example's loss to the half of the image its caption describes; an
    example given another image's caption counts whole.

    It trains on the device the UNet is on. Every random number is drawn on the CPU, so a run on a GPU sees the
    same batches, timesteps and noise as on the CPU; its weights still differ by the GPU's rounding."""
    device = unet.device
    steps, batch, peak_lr, train_text_encoder = stage.steps, stage.batch, stage.peak_lr, stage.train_text_encoder
    tokenizer = build_clip_tokenizer()
    encoded = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    ids, token_masks = encoded.input_ids, encoded.attention_mask
    empty = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    alphas = sd_alphas_cumprod()
    width = text_encoder.config.hidden_size
    heads = torch.nn.ModuleList([torch.nn.Linear(2 * width, len(classes)) for classes in FACT_CLASSES.values()]) \
        if stage.fact_weight else torch.nn.ModuleList()
    heads.to(device)
    parameters = list(unet.parameters()) + (list(text_encoder.parameters()) if train_text_encoder else [])
    unet.requires_grad_(True)  # a loaded or earlier-trained UNet comes back frozen
    text_encoder.requires_grad_(train_text_encoder)
    optimiser = torch.optim.AdamW(parameters + list(heads.parameters()), lr=6e-4, weight_decay=0.01)
    ema = [p.detach().clone() for p in parameters]
    generator = torch.Generator().manual_seed(2)
    started = time.monotonic()

    def swap_in_average():
        swap_weights(ema, parameters)

    unet.train()
    text_encoder.train()
    for step in range(steps):
        cosine_lr(optimiser, peak_lr, step, steps)
        index = torch.randint(0, len(latents), (batch,), generator=generator)
        x0 = latents[index].to(device)
        tokens, swapped = ids[index].clone(), torch.zeros(batch, dtype=torch.bool)
        if stage.mismatched_captions:
            tokens, swapped = mismatch_captions(tokens, ids, stage.mismatched_captions, generator)
        drop = torch.rand(batch, generator=generator) < 0.1  # unconditional examples for classifier-free guidance
        tokens[drop] = empty
        t = training_timesteps(batch, generator, stage.first_timestep, stage.last_timestep)
        noise = torch.randn(x0.shape, generator=generator)
        if stage.offset_noise:
            noise = noise + offset_noise(x0.shape, generator, stage.offset_noise)
        noise, a = noise.to(device), alphas[t].view(-1, 1, 1, 1).to(device)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        context = text_encoder(tokens.to(device)).last_hidden_state
        weight = noisy_step_weight(a, stage.max_loss_weight)
        error = weight * (unet(noisy, t.to(device), encoder_hidden_states=context).sample - noise) ** 2
        if halves is None:
            loss = error.mean()
        else:
            region = loss_region(halves[index].masked_fill(swapped, WHOLE), *x0.shape[-2:]).to(device)
            loss = (error * region).sum() / (region.sum() * x0.shape[1])
        if stage.fact_weight and (~drop).any():
            mask = token_masks[index].unsqueeze(-1).float().to(device)
            pooled = torch.cat([(context * mask).sum(1) / mask.sum(1), context.max(1).values], -1)[~drop.to(device)]
            targets = facts[index][~drop].to(device)
            loss = loss + stage.fact_weight * sum(F.cross_entropy(head(pooled), targets[:, fact])
                                            for fact, head in enumerate(heads))
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimiser.step()
        decay = min(0.995, (1 + step) / (10 + step))  # a short horizon: the run itself is short
        with torch.no_grad():
            for average, parameter in zip(ema, parameters):
                average.lerp_(parameter, 1 - decay)
        if (step + 1) % log_every == 0:
            print(f"diffusion step {step + 1}/{steps} loss {loss.item():.4f} ({time.monotonic() - started:.0f}s)",
                  flush=True)
        if snapshot and snapshot_every and (step + 1) % snapshot_every == 0 and step + 1 < steps:
            swap_in_average()
            snapshot(unet, text_encoder, step + 1)
            swap_in_average()
    swap_in_average()
    return unet.eval().requires_grad_(False), text_encoder.eval().requires_grad_(False)


def save_checkpoint(path: Path, vae, text_encoder, unet):
    state = {**unet_to_original(unet), **vae_to_original(vae), **clip_to_original(text_encoder, SD1_CLIP_PREFIX)}
    state = {key: value.detach().to("cpu", torch.float16).contiguous() for key, value in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=CHECKPOINT_METADATA)
    print(f"saved {path} ({path.stat().st_size / 1e6:.1f} MB)", flush=True)


@dataclass(frozen=True)
class Recipe:
    """Diffusion stages run one after the other, each after the first starting from the file the one before saved
    (weights as stored, in float16, so that `--resume` with a stage's options continues exactly). With
    `average_with_stage` K, the model kept is the even average of the last stage's weights and those saved after
    stage K: half of what the stages after K changed (see average_checkpoints)."""
    stages: tuple[DiffusionStage, ...]
    average_with_stage: int | None = None

    def __post_init__(self):
        if self.average_with_stage is not None and not 1 <= self.average_with_stage < len(self.stages):
            raise ValueError(f"average_with_stage must name a stage before the last, 1..{len(self.stages) - 1}")


def stage_file(out: Path, number: int) -> Path:
    """Where a run writing `out` saves the weights after stage `number`."""
    return out.with_suffix(f".stage{number}.safetensors")


def average_checkpoints(first: Path, second: Path, out: Path):
    """The even average of two checkpoints' weights, stored as they were. Two descendants of one model average
    into a model between them (a "model soup"), which here keeps what each does right (see the module's
    docstring)."""
    a, b = load_file(str(first)), load_file(str(second))
    state = {key: ((value.float() + b[key].float()) / 2).to(value.dtype) for key, value in a.items()}
    save_file(state, str(out), metadata=CHECKPOINT_METADATA)
    print(f"saved {out}: the average of {first.name} and {second.name}", flush=True)


# The recipe that made the shipped model, as one command.
SHIPPED_RECIPE = Recipe(stages=(
    DiffusionStage(steps=1100, peak_lr=1.2e-3, fact_weight=0.1, offset_noise=0.3, max_loss_weight=3),
    DiffusionStage(steps=560, peak_lr=5e-4, first_timestep=200, last_timestep=700),
    DiffusionStage(steps=170, peak_lr=3e-4, last_timestep=300),
    DiffusionStage(steps=200, peak_lr=3e-4, first_timestep=400, offset_noise=0.3, max_loss_weight=3,
                   train_text_encoder=False),
    DiffusionStage(steps=60, peak_lr=3e-4, last_timestep=300),
    DiffusionStage(steps=100, peak_lr=1e-4, last_timestep=300, mismatched_captions=0.15, train_text_encoder=False),
    DiffusionStage(steps=80, peak_lr=1e-4, first_timestep=400, offset_noise=0.1, max_loss_weight=3,
                   train_text_encoder=False),
    DiffusionStage(steps=50, peak_lr=1e-4, last_timestep=300, mismatched_captions=0.15, train_text_encoder=False),
), average_with_stage=6)


def load_components(path: Path, device: torch.device | str = "cpu"):
    """The autoencoder, text encoder and UNet of a checkpoint, in float32, through the app's own loader."""
    from backend.models.loader import CheckpointLoader

    pipeline = CheckpointLoader().load(path, torch.float32).pipeline
    return pipeline.vae.to(device), pipeline.text_encoder.to(device), pipeline.unet.to(device)


def stage_from_flags(args) -> DiffusionStage:
    return DiffusionStage(**{field.name: getattr(args, field.name) for field in fields(DiffusionStage)})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("backend/models/builtin/shapes-demo.safetensors"))
    parser.add_argument("--images", type=int, default=30000)
    parser.add_argument("--vae-steps", type=int, default=1600)
    parser.add_argument("--partial-captions", type=float, default=0.8,
                        help="share of the two-object scenes captioned with one object only, their loss on its "
                             "half (see make_dataset)")
    parser.add_argument("--small-two-object-scenes", dest="two_object_size", action="store_const",
                        const="small", default=None,
                        help="draw both objects of a two-object scene small, as for the model shipped before "
                             "(their captions name no size, which means the default size)")
    parser.add_argument("--two-object-share", type=float, default=0.35,
                        help="share of the images with two objects (see random_scene; the model shipped before: 0.2)")
    parser.add_argument("--device", default="cpu",
                        help="where to train: cpu (the recipe's timings and the shipped model) or e.g. cuda, which "
                             "draws the same random numbers but rounds differently, so its model is not the same")
    parser.add_argument("--snapshot-every", type=int, default=500,
                        help="also save the averaged weights every this many steps of a stage, to "
                             "<out>.stage<K>-step<N>.safetensors")
    parser.add_argument("--recipe", choices=["shipped", "flags"], default="shipped",
                        help="shipped: the stages and the average that made "
                             "backend/models/builtin/shapes-demo.safetensors; "
                             "flags: one stage made of the options below")
    parser.add_argument("--resume", type=Path, default=None,
                        help="continue the diffusion training of this checkpoint (its VAE is kept as it is)")
    stage = parser.add_argument_group("one stage (with --recipe flags)")
    stage.add_argument("--diffusion-steps", dest="steps", type=int, default=2000)
    stage.add_argument("--peak-lr", type=float, default=6e-4)
    stage.add_argument("--batch", type=int, default=128, help="images per diffusion training step")
    stage.add_argument("--fact-weight", type=float, default=0.0,
                       help="weight of the text encoder's caption-fact heads (see train_diffusion)")
    stage.add_argument("--offset-noise", type=float, default=0.0, help="per-channel noise offset (see offset_noise)")
    stage.add_argument("--max-loss-weight", type=float, default=1.0,
                       help="cap of the (1-a)/a loss weight of noisy timesteps (1: plain noise MSE)")
    stage.add_argument("--first-timestep", type=int, default=0,
                       help="train only on timesteps from this one up to --last-timestep")
    stage.add_argument("--last-timestep", type=int, default=999,
                       help="train only on timesteps up to this one (below ~300: fine detail such as clean edges)")
    stage.add_argument("--mismatched-captions", type=float, default=0.0,
                       help="share of examples trained with another image's caption")
    stage.add_argument("--freeze-text-encoder", dest="train_text_encoder", action="store_false",
                       help="train only the UNet (for a stage with --mismatched-captions)")
    args = parser.parse_args(argv)
    if args.recipe == "flags":
        recipe = Recipe(stages=(stage_from_flags(args),))
    elif stage_from_flags(args) != DiffusionStage() or args.resume:
        parser.error("the stage options and --resume need --recipe flags (the shipped recipe starts from nothing "
                     "and sets its own)")
    else:
        recipe = SHIPPED_RECIPE
    device = choose_device(args.device)  # before any work: a GPU that is not there fails at once, clearly
    started = time.monotonic()
    torch.manual_seed(0)
    pixels, captions, facts, halves = make_dataset(args.images, seed=0, partial_share=args.partial_captions,
                                                  two_object_size=args.two_object_size,
                                                  two_object_share=args.two_object_share)
    print(f"dataset: {len(captions)} images, e.g. {captions[:3]}", flush=True)
    if args.resume:
        vae, text_encoder, unet = load_components(args.resume, device)
    else:
        vae, text_encoder, unet = (model.to(device) for model in build_models())
        vae = train_vae(vae, pixels, args.vae_steps)
        normalise_latent_scale(vae, pixels)
        round_to_stored_precision(vae)
    print(f"parameters: unet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M, "
          f"text {sum(p.numel() for p in text_encoder.parameters()) / 1e6:.2f}M, "
          f"vae {sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M", flush=True)
    # Once (30,000 images take ~3 min): the stages reloaded from files get back the same, rounded autoencoder.
    latents = encode_all(vae, pixels)
    stages = recipe.stages
    for number, stage in enumerate(stages, 1):
        if number > 1:
            saved = stage_file(args.out, number - 1)
            save_checkpoint(saved, vae, text_encoder, unet)
            vae, text_encoder, unet = load_components(saved, device)
        print(f"stage {number}/{len(stages)}: {stage}; latents std {latents.std():.3f}", flush=True)

        def snapshot(unet, text_encoder, step, number=number, vae=vae):
            save_checkpoint(args.out.with_suffix(f".stage{number}-step{step}.safetensors"), vae, text_encoder, unet)

        unet, text_encoder = train_diffusion(unet, text_encoder, latents, captions, stage, facts=facts, halves=halves,
                                             snapshot=snapshot, snapshot_every=args.snapshot_every)
    if recipe.average_with_stage:
        last = stage_file(args.out, len(stages))
        save_checkpoint(last, vae, text_encoder, unet)
        average_checkpoints(stage_file(args.out, recipe.average_with_stage), last, args.out)
    else:
        save_checkpoint(args.out, vae, text_encoder, unet)
    print(f"total training time {(time.monotonic() - started) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
