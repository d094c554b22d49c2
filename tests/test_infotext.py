"""A1111 infotext: what we write parses back field by field; real A1111 samples parse."""
from __future__ import annotations

from backend.core.infotext import build_infotext, parse_infotext

A1111_SAMPLE = """masterpiece, best quality, 1girl, (red hair:1.2), <lora:detail:0.6>
Negative prompt: lowres, bad anatomy, (worst quality:1.4)
Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3052351148, Size: 512x768, \
Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, Hires upscale: 2, \
Hires upscaler: R-ESRGAN 4x+, Lora hashes: "detail: 1a2b3c4d5e6f", Version: v1.10.1"""


def test_round_trip_of_every_field():
    params = {"Steps": 20, "Sampler": "Euler a", "Schedule type": "Karras", "CFG scale": 7.5, "Seed": 123,
              "Size": "512x768", "Model hash": "0123456789", "Model": "my, model: v2", "Note": 'say "hi"\nbye'}
    text = build_infotext("a cat\non two lines, (ears:1.2)", "ugly, blurry", params)
    parsed = parse_infotext(text)
    assert parsed["Prompt"] == "a cat\non two lines, (ears:1.2)"
    assert parsed["Negative prompt"] == "ugly, blurry"
    for key, value in params.items():
        assert parsed[key] == str(value), key
    assert (parsed["Size-1"], parsed["Size-2"]) == ("512", "768")
    assert parsed["Clip skip"] == "1"


def test_whole_floats_are_written_like_a1111():
    assert "CFG scale: 7," in build_infotext("p", "", {"CFG scale": 7.0, "Steps": 1, "Seed": 1})


def test_a1111_sample_with_quoted_values_and_hires_keys():
    parsed = parse_infotext(A1111_SAMPLE)
    assert parsed["Prompt"].startswith("masterpiece") and parsed["Prompt"].endswith("<lora:detail:0.6>")
    assert parsed["Negative prompt"] == "lowres, bad anatomy, (worst quality:1.4)"
    assert parsed["Lora hashes"] == "detail: 1a2b3c4d5e6f"
    assert parsed["Hires upscaler"] == "R-ESRGAN 4x+" and parsed["Denoising strength"] == "0.45"
    assert parsed["Seed"] == "3052351148" and parsed["Size-2"] == "768"


def test_last_line_with_fewer_than_three_pairs_is_prompt():
    parsed = parse_infotext("a photo\nstyle: anime, mood: calm")
    assert parsed["Prompt"] == "a photo\nstyle: anime, mood: calm"
    assert "style" not in parsed


def test_request_fields_from_old_and_new_infotext():
    from backend.core.infotext import request_fields

    old = request_fields(parse_infotext("cat\nSteps: 30, Sampler: DPM++ 2M Karras, CFG scale: 5.5, Seed: 9, "
                                        "Size: 640x448, Model hash: abcdef1234, Model: mymodel"))
    assert old == {"prompt": "cat", "negative_prompt": "", "steps": 30, "sampler_name": "DPM++ 2M",
                   "scheduler": "Karras", "cfg_scale": 5.5, "seed": 9, "width": 640, "height": 448,
                   "model_hash": "abcdef1234", "model_name": "mymodel", "clip_skip": 1}  # missing means 1
    new = request_fields(parse_infotext(A1111_SAMPLE))
    assert (new["sampler_name"], new["scheduler"], new["steps"]) == ("DPM++ 2M", "Karras", 28)
    xl = request_fields(parse_infotext(A1111_MORE_SAMPLES[0][0]))
    assert (xl["sd_vae"], xl["clip_skip"]) == ("sdxl_vae.safetensors", 1)


A1111_MORE_SAMPLES = [
    # SDXL with a quoted multi-key value, TI hashes and a version
    ('photo of a woman, <lora:film:0.8>, embedding:neg1\nNegative prompt: bad hands\nSteps: 30, Sampler: DPM++ 2M SDE, '
     'Schedule type: Exponential, CFG scale: 5, Seed: 1234567890, Size: 1024x1024, Model hash: 31e35c80fc, '
     'Model: sd_xl_base_1.0, VAE hash: 235745af8d, VAE: sdxl_vae.safetensors, '
     'Lora hashes: "film: a1b2c3d4e5f6, other: 0f0f0f0f0f0f", TI hashes: "neg1: 9a8b7c6d5e4f", Version: v1.9.4',
     {"Sampler": "DPM++ 2M SDE", "Size-1": "1024", "Lora hashes": "film: a1b2c3d4e5f6, other: 0f0f0f0f0f0f",
      "TI hashes": "neg1: 9a8b7c6d5e4f", "VAE": "sdxl_vae.safetensors", "Version": "v1.9.4"}),
    # hires fix with a quoted hires prompt containing commas and an escaped quote, clip skip
    ('castle\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x512, Model hash: 6ce0161689, '
     'Model: v1-5, Denoising strength: 0.7, Clip skip: 2, Hires prompt: "castle, \\"detailed\\", 8k", '
     'Hires upscale: 1.5, Hires steps: 10, Hires upscaler: Latent',
     {"Clip skip": "2", "Hires prompt": 'castle, "detailed", 8k', "Hires upscale": "1.5", "Hires steps": "10",
      "Hires upscaler": "Latent", "Denoising strength": "0.7"}),
    # old style: schedule inside the sampler name, no negative prompt, multi-line prompt
    ('line one\nline two\nSteps: 25, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 42, Size: 768x512, '
     'Model hash: abcdef0123, Model: anything-v3',
     {"Prompt": "line one\nline two", "Negative prompt": "", "Sampler": "DPM++ 2M Karras", "Size-2": "512"}),
]


def test_more_real_a1111_samples():
    for text, expected in A1111_MORE_SAMPLES:
        parsed = parse_infotext(text)
        for key, value in expected.items():
            assert parsed[key] == value, (key, parsed.get(key))
