"""The demo model's data generator and detector (tools/shapes_world.py): captions are reproducible and the
detector reads rendered scenes back correctly, so evaluation scores measure the model, not the detector."""
from __future__ import annotations

import random

from tools.shapes_world import detect, random_scene, render


def test_scenes_are_deterministic():
    first = [random_scene(random.Random(7)).caption for _ in range(3)]
    assert first == [random_scene(random.Random(7)).caption for _ in range(3)]
    rng_a, rng_b = random.Random(3), random.Random(3)
    assert list(render(random_scene(rng_a), rng_a).getdata()) == list(render(random_scene(rng_b), rng_b).getdata())


def test_detector_reads_ground_truth_scenes():
    rng = random.Random(11)
    counts = {"n": 0, "colour": 0, "background": 0, "shape": 0, "positioned": 0, "position": 0}
    while counts["n"] < 400:
        scene = random_scene(rng)
        image = render(scene, rng)
        if len(scene.objects) != 1:
            continue
        spec, found = scene.objects[0], detect(image)
        counts["n"] += 1
        counts["colour"] += found.colour == spec.colour
        counts["background"] += found.background == scene.background
        counts["shape"] += found.shape == spec.shape
        if spec.position:
            counts["positioned"] += 1
            counts["position"] += found.position == spec.position
    assert counts["colour"] / counts["n"] >= 0.98 and counts["background"] == counts["n"]
    assert counts["shape"] / counts["n"] >= 0.95
    assert counts["position"] / counts["positioned"] >= 0.97
