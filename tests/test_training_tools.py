"""The demo model's training helpers (tools/train_demo_model.py): which timesteps a batch trains on and how
much each one's error counts."""
from __future__ import annotations

import torch

from tools.train_demo_model import noisy_step_weight, sd_alphas_cumprod, training_timesteps


def test_noisy_step_weight_is_one_for_clean_steps_and_capped_for_noisy_ones():
    alphas = sd_alphas_cumprod()
    weights = noisy_step_weight(alphas, cap=10)
    assert torch.all(weights[:250] == 1)  # a > 1/2: plain noise MSE
    assert weights[999] == 10 and weights[850] == 10  # (1 - a) / a is 214 and 44 there
    a = alphas[500]
    assert torch.isclose(weights[500], (1 - a) / a)  # 2.6, between the bounds
    assert torch.all(weights[1:] >= weights[:-1])  # never less weight for a noisier step
    assert torch.all(noisy_step_weight(alphas, cap=1) == 1)  # the default: unweighted


def test_training_timesteps_draw_the_requested_share_from_the_noisy_end():
    uniform = training_timesteps(20000, torch.Generator().manual_seed(0))
    assert uniform.min() >= 0 and uniform.max() <= 999
    assert abs((uniform >= 700).float().mean().item() - 0.3) < 0.02
    biased = training_timesteps(20000, torch.Generator().manual_seed(0), high_fraction=0.5, high_start=700)
    # half drawn from 700..999, the other half uniform (30% of which also land there): 65%
    assert abs((biased >= 700).float().mean().item() - 0.65) < 0.02
    same = training_timesteps(20000, torch.Generator().manual_seed(0), high_fraction=0.5, high_start=700)
    assert torch.equal(biased, same)  # seeded: the training run is reproducible
