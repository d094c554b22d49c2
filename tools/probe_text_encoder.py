"""Does a demo checkpoint's text encoder carry each caption fact (position, colour, shape, background)?

A linear probe per fact, trained on pooled text-encoder outputs of captions from the shapes world and scored
on held-out captions. If a fact is missing here, the UNet cannot learn to follow it whatever it is trained on.

    python -m tools.probe_text_encoder backend/models/builtin/shapes-demo.safetensors [other.safetensors ...]
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from backend.models.loader import CheckpointLoader
from tools.shapes_world import COLOURS, POSITIONS, SHAPES, random_scene

NO_POSITION = "(none stated)"


def single_object_scenes(count: int, seed: int = 5):
    rng = random.Random(seed)
    return [scene for scene in (random_scene(rng) for _ in range(count)) if len(scene.objects) == 1]


def facts(scenes) -> dict[str, torch.Tensor]:
    """Class indices per fact; captions without a position get their own class."""
    positions = [*POSITIONS, NO_POSITION]
    return {
        "position": torch.tensor([positions.index(s.objects[0].position or NO_POSITION) for s in scenes]),
        "colour": torch.tensor([list(COLOURS).index(s.objects[0].colour) for s in scenes]),
        "shape": torch.tensor([SHAPES.index(s.objects[0].shape) for s in scenes]),
        "background": torch.tensor([list(COLOURS).index(s.background) for s in scenes]),
    }


@torch.no_grad()
def pooled_features(checkpoint: Path, captions: list[str]) -> torch.Tensor:
    """Mean and max over the caption's tokens of the encoder's last hidden state."""
    pipeline = CheckpointLoader().load(checkpoint, torch.float32).pipeline
    features = []
    for start in range(0, len(captions), 256):
        tokens = pipeline.tokenizer(captions[start:start + 256], padding="max_length", max_length=77,
                                    truncation=True, return_tensors="pt")
        hidden = pipeline.text_encoder(tokens.input_ids).last_hidden_state
        mask = tokens.attention_mask.unsqueeze(-1).float()
        features.append(torch.cat([(hidden * mask).sum(1) / mask.sum(1), hidden.max(1).values], dim=-1))
    return torch.cat(features)


def probe_accuracy(features: torch.Tensor, labels: torch.Tensor, steps: int = 400) -> float:
    """Held-out accuracy (last fifth) of a softmax classifier trained on the first four fifths."""
    split = len(labels) * 4 // 5
    mean, std = features[:split].mean(0), features[:split].std(0) + 1e-6
    x = (features - mean) / std
    torch.manual_seed(0)
    weight = torch.zeros(x.shape[1], int(labels.max()) + 1, requires_grad=True)
    bias = torch.zeros(int(labels.max()) + 1, requires_grad=True)
    optimiser = torch.optim.Adam([weight, bias], lr=0.05)
    for _ in range(steps):
        loss = F.cross_entropy(x[:split] @ weight + bias, labels[:split])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return float(((x[split:] @ weight + bias).argmax(1) == labels[split:]).float().mean())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--captions", type=int, default=6000)
    args = parser.parse_args(argv)
    scenes = single_object_scenes(args.captions)
    labels = facts(scenes)
    held_out = labels["position"][len(scenes) * 4 // 5:]
    print(f"{len(scenes)} single-object captions; position chance (majority class): "
          f"{torch.bincount(held_out).max().item() / len(held_out):.1%}")
    for checkpoint in args.checkpoints:
        features = pooled_features(checkpoint, [scene.caption for scene in scenes])
        scores = ", ".join(f"{fact} {probe_accuracy(features, values):.1%}" for fact, values in labels.items())
        print(f"{checkpoint}: {scores}")


if __name__ == "__main__":
    main()
