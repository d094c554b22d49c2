"""The demo model's training helpers (tools/train_demo_model.py): which timesteps a batch trains on and how
much each one's error counts."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tools.train_demo_model import (
    mismatch_captions,
    noisy_step_weight,
    offset_noise,
    sd_alphas_cumprod,
    training_timesteps,
)


def test_noisy_step_weight_is_one_for_clean_steps_and_capped_for_noisy_ones():
    alphas = sd_alphas_cumprod()
    weights = noisy_step_weight(alphas, cap=10)
    assert torch.all(weights[:250] == 1)  # a > 1/2: plain noise MSE
    assert weights[999] == 10 and weights[850] == 10  # (1 - a) / a is 214 and 44 there
    a = alphas[500]
    assert torch.isclose(weights[500], (1 - a) / a)  # 2.6, between the bounds
    assert torch.all(weights[1:] >= weights[:-1])  # never less weight for a noisier step
    assert torch.all(noisy_step_weight(alphas, cap=1) == 1)  # the default: unweighted


def test_training_timesteps_stay_in_the_allowed_band():
    low = training_timesteps(20000, torch.Generator().manual_seed(0), last=300)
    assert low.max() == 300 and low.min() == 0
    assert abs(low.float().mean().item() - 150) < 5  # still uniform over 0..300
    band = training_timesteps(20000, torch.Generator().manual_seed(0), first=250, last=650)
    assert band.min() == 250 and band.max() == 650
    assert abs(band.float().mean().item() - 450) < 5
    same = training_timesteps(20000, torch.Generator().manual_seed(0), first=250, last=650)
    assert torch.equal(band, same)  # seeded: the training run is reproducible


def test_offset_noise_is_one_value_per_image_and_channel_of_the_requested_size():
    offsets = offset_noise((4096, 4, 16, 16), torch.Generator().manual_seed(0), 0.3)
    assert offsets.shape == (4096, 4, 1, 1)  # broadcasts over the latent: the same shift at every position
    assert abs(offsets.std().item() - 0.3) < 0.01 and abs(offsets.mean().item()) < 0.01


def test_mismatched_captions_replace_about_the_requested_share_with_other_captions():
    all_ids = torch.arange(1000).unsqueeze(1).repeat(1, 77)  # caption i is the row of i's
    batch = all_ids.repeat(4, 1)
    mixed, swapped = mismatch_captions(batch.clone(), all_ids, 0.3, torch.Generator().manual_seed(0))
    changed = (mixed != batch).any(1)
    assert abs(changed.float().mean().item() - 0.3) < 0.03
    assert torch.all(mixed[changed] == mixed[changed][:, :1])  # whole captions swapped, not single tokens
    assert torch.equal(changed, changed & swapped) and swapped.sum() - changed.sum() < 5  # rarely its own again
    unchanged, none = mismatch_captions(batch.clone(), all_ids, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(unchanged, batch) and not none.any()


def test_partial_captions_name_one_object_of_a_two_object_image_and_its_loss_counts_on_that_half():
    from tools.shapes_world import COLOURS
    from tools.train_demo_model import LEFT_HALF, RIGHT_HALF, WHOLE, loss_region, make_dataset

    pixels, captions, facts, halves = make_dataset(300, seed=0, partial_share=0.5)
    plain_pixels, plain_captions, _, plain_halves = make_dataset(300, seed=0)  # the default: none
    assert torch.equal(pixels, plain_pixels) and not plain_halves.any()  # the same images either way
    partial = (halves != WHOLE).nonzero().flatten().tolist()
    two_objects = [i for i, caption in enumerate(plain_captions) if " and a " in caption]
    assert set(partial) < set(two_objects) and 0.3 < len(partial) / len(two_objects) < 0.7
    for i in partial:
        left_colour, right_colour = (word for word in plain_captions[i].split() if word in COLOURS and
                                     not plain_captions[i].endswith(f"{word} background"))
        named = right_colour if halves[i] == RIGHT_HALF else left_colour
        other = left_colour if halves[i] == RIGHT_HALF else right_colour
        assert named in captions[i] and other not in captions[i] and " and a " not in captions[i]
        assert list(COLOURS)[facts[i, 1]] == named  # the fact heads learn the object the caption names
    region = loss_region(torch.tensor([WHOLE, LEFT_HALF, RIGHT_HALF]), 16, 16)
    assert region.shape == (3, 1, 16, 16) and region[0].all()
    assert region[1, ..., :8].all() and not region[1, ..., 8:].any()
    assert region[2, ..., 8:].all() and not region[2, ..., :8].any()


def test_a_frozen_text_encoder_stays_as_it_was_while_the_unet_trains():
    from tools.train_demo_model import DiffusionStage, build_models, train_diffusion

    torch.manual_seed(0)
    _, text_encoder, unet = build_models()
    latents = torch.randn(4, 4, 16, 16)
    captions = ["a red circle", "a blue square on white", "a big green star", "a small white triangle"]
    text_before = [p.detach().clone() for p in text_encoder.parameters()]
    unet_before = [p.detach().clone() for p in unet.parameters()]
    train_diffusion(unet, text_encoder, latents, captions, DiffusionStage(steps=1, batch=2, train_text_encoder=False))
    assert all(torch.equal(a, b) for a, b in zip(text_before, text_encoder.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(unet_before, unet.parameters()))
    train_diffusion(unet, text_encoder.requires_grad_(True), latents, captions, DiffusionStage(steps=1, batch=2))
    assert not all(torch.equal(a, b) for a, b in zip(text_before, text_encoder.parameters()))


def test_a_staged_run_saves_each_stage_and_the_averaged_checkpoint_the_app_loads(tmp_path, monkeypatch):
    import tools.train_demo_model as training
    from backend.models.loader import CheckpointLoader

    stage = training.DiffusionStage(steps=1, batch=2)
    # Each stage after the first from a file; the model kept is the average of stage 1's and the last one's.
    monkeypatch.setattr(training, "SHIPPED_RECIPE", training.Recipe(stages=(stage, stage, stage), average_with_stage=1))
    monkeypatch.setattr(training, "report_reconstruction", lambda vae: None)  # 200 decodes: slow, and not the point
    encoded = []
    monkeypatch.setattr(training, "encode_all", lambda vae, pixels: encoded.append(vae) or torch.randn(8, 4, 16, 16))
    out = tmp_path / "demo.safetensors"
    training.main(["--out", str(out), "--images", "8", "--vae-steps", "1"])
    # The autoencoder is rounded to its stored precision before the first encoding, so the stages reloaded from
    # files (float16) have the same one and reuse its latents rather than encoding the images again.
    assert len(encoded) == 1
    assert (tmp_path / "demo.stage3.safetensors").is_file() and not (tmp_path / "demo.stage4.safetensors").exists()
    first, last, kept = (load_file(str(tmp_path / name)) for name in
                         ["demo.stage1.safetensors", "demo.stage3.safetensors", "demo.safetensors"])
    assert all(torch.equal(kept[key], ((first[key].float() + last[key].float()) / 2).half()) for key in kept)
    assert not torch.equal(kept["model.diffusion_model.out.2.weight"], last["model.diffusion_model.out.2.weight"])
    loaded = CheckpointLoader().load(out, torch.float32).pipeline
    assert loaded.unet.config.cross_attention_dim == 64 and loaded.text_encoder.config.hidden_size == 64
    first_stage = CheckpointLoader().load(tmp_path / "demo.stage1.safetensors", torch.float32).pipeline
    assert not torch.equal(first_stage.unet.conv_out.weight, loaded.unet.conv_out.weight)  # stage 2 trained on
    assert same_weights(loaded.vae, encoded[0].state_dict())


def test_a_recipe_refuses_to_average_with_a_stage_it_does_not_have():
    from tools.train_demo_model import DiffusionStage, Recipe

    stage = DiffusionStage(steps=1)
    assert Recipe(stages=(stage, stage), average_with_stage=1).average_with_stage == 1
    for number in (0, 2, 3):
        with pytest.raises(ValueError, match="average_with_stage must name a stage before the last, 1..1"):
            Recipe(stages=(stage, stage), average_with_stage=number)


def same_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(value, weights[key]) for key, value in module.state_dict().items())


def test_rounding_to_the_stored_precision_is_what_a_float16_file_gives_back():
    from tools.train_demo_model import round_to_stored_precision

    layer = torch.nn.Linear(8, 8)
    torch.nn.init.normal_(layer.weight, std=1e-3)  # values float16 cannot hold exactly
    stored = {key: value.half().float() for key, value in layer.state_dict().items()}
    assert not same_weights(layer, stored)
    assert same_weights(round_to_stored_precision(layer), stored)


def test_stage_options_and_resume_without_recipe_flags_are_refused(capsys):
    from tools.train_demo_model import main

    for arguments in (["--diffusion-steps", "10"], ["--resume", "some.safetensors"]):
        with pytest.raises(SystemExit):
            main(arguments)
        assert "--recipe flags" in capsys.readouterr().err


class DatasetMade(Exception):
    pass


@pytest.mark.parametrize("arguments, expected", [([], (0.8, None, 0.35)),
                                                 (["--partial-captions", "0", "--small-two-object-scenes",
                                                   "--two-object-share", "0.2"], (0.0, "small", 0.2))])
def test_the_dataset_options_reach_the_dataset(monkeypatch, arguments, expected):
    import tools.train_demo_model as training

    def record(count, seed, partial_share, two_object_size, two_object_share):
        raise DatasetMade(partial_share, two_object_size, two_object_share)

    monkeypatch.setattr(training, "make_dataset", record)
    with pytest.raises(DatasetMade) as made:
        training.main(["--images", "8", *arguments])
    assert made.value.args == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_training_on_a_gpu_that_is_not_there_fails_at_once_naming_the_option(monkeypatch):
    import tools.train_demo_model as training

    monkeypatch.setattr(training, "make_dataset", lambda *args, **kwargs: pytest.fail("work began before the check"))
    with pytest.raises(ValueError, match="--device cuda"):
        training.main(["--device", "cuda"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_evaluating_on_a_gpu_that_is_not_there_fails_at_once_naming_the_option(monkeypatch):
    import tools.evaluate_demo_model as evaluation

    monkeypatch.setattr(evaluation, "evaluate", lambda *args, **kwargs: pytest.fail("work began before the check"))
    with pytest.raises(ValueError, match="--device cuda"):
        evaluation.main(["--device", "cuda"])
