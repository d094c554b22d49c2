"""The A1111 prompt language end to end (weights, chunks, schedules), LoRAs, embeddings, VAE and clip skip."""
from __future__ import annotations

import hashlib
import io
import os
import struct

import numpy as np
import pytest
from PIL import Image

from backend.core.infotext import parse_infotext, request_fields
from backend.core.requests import Txt2ImgRequest
from tests.conftest import FAST
from tests.tiny_networks import write_diffusers_lora, write_embedding, write_kohya_lora, write_vae

LONG_PREFIX = ", ".join(["a red square"] * 30)  # 90+ tokens: the end of the prompt lies in a second chunk


def generate(services, **fields):
    request = Txt2ImgRequest(**{**FAST, "seed": 11, "save_images": False, **fields})
    job = services.jobs.run_and_wait(request, timeout=300)
    assert job.status == "done", job.error
    image = job.result.images[0]
    return np.asarray(Image.open(io.BytesIO(image.png)).convert("RGB"), dtype=np.int16), job.result


def same(a, b) -> bool:
    return np.array_equal(a, b)


# --- prompt language ----------------------------------------------------------------------------------------

def test_weight_one_is_the_plain_word_and_other_weights_change_the_image(services):
    plain, _ = generate(services, prompt="a photo of a cat")
    weighted_one, _ = generate(services, prompt="a photo of a (cat:1.0)")
    heavier, _ = generate(services, prompt="a photo of a (cat:1.5)")
    emphasised, _ = generate(services, prompt="a photo of a ((cat))")
    assert same(plain, weighted_one)
    assert not same(plain, heavier)
    assert not same(plain, emphasised) and not same(heavier, emphasised)


def test_words_after_token_77_change_the_image(services):
    cat, _ = generate(services, prompt=LONG_PREFIX + ", a cat")
    dog, _ = generate(services, prompt=LONG_PREFIX + ", a dog")
    assert services.networks.token_counter(LONG_PREFIX + ", a cat")[0] > 77
    assert not same(cat, dog)


def test_break_starts_a_new_chunk(services):
    joined, _ = generate(services, prompt="a cat, a dog")
    broken, _ = generate(services, prompt="a cat BREAK a dog")
    assert not same(joined, broken)
    assert services.networks.token_counter("a cat BREAK a dog") == (75 + 2, 150)


def test_prompt_editing_and_alternation_follow_the_schedule(services):
    cat, _ = generate(services, prompt="a cat")
    dog, _ = generate(services, prompt="a dog")
    edited, _ = generate(services, prompt="a [cat:dog:0.5]", steps=4)
    cat_4, _ = generate(services, prompt="a cat", steps=4)
    dog_4, _ = generate(services, prompt="a dog", steps=4)
    whole, _ = generate(services, prompt="a [cat:dog:1.0]", steps=4)  # switches after the last step: cat only
    alternating, _ = generate(services, prompt="a [cat|dog]", steps=4)
    assert not same(edited, cat_4) and not same(edited, dog_4)
    assert same(whole, cat_4)
    assert not same(alternating, cat_4) and not same(alternating, dog_4) and not same(alternating, edited)
    negative_edited, _ = generate(services, prompt="a cat", negative_prompt="[blurry:sharp:2]", steps=4)
    negative_plain, _ = generate(services, prompt="a cat", negative_prompt="blurry", steps=4)
    assert not same(negative_edited, negative_plain)
    assert not same(cat, dog)


def test_unbalanced_brackets_are_reported_not_fatal(services):
    image, result = generate(services, prompt="a (cat:1.2 on a mat")
    assert any("unclosed '('" in warning for warning in result.warnings)
    assert image.std() > 0


def services_with_only(family: str, make_services, checkpoint_files, tmp_path):
    folder = tmp_path / family / "Stable-diffusion"
    folder.mkdir(parents=True)
    os.link(checkpoint_files[family], folder / checkpoint_files[family].name)
    return make_services(models_dir=tmp_path / family)


def test_prompt_syntax_on_sd2(make_services, checkpoint_files, tmp_path):
    from backend.prompts.encoding import PromptEncoder

    services = services_with_only("sd2", make_services, checkpoint_files, tmp_path)
    plain, _ = generate(services, prompt="a cat")
    assert same(plain, generate(services, prompt="(a cat:1.0)")[0])
    assert not same(plain, generate(services, prompt="(a cat:1.4)")[0])
    assert not same(generate(services, prompt=LONG_PREFIX + ", a cat")[0],
                    generate(services, prompt=LONG_PREFIX + ", a dog")[0])
    with services.models.lease(None) as (_, model):
        assert [slot.pad_token for slot in PromptEncoder(model.pipeline, model.family).slots] == [0]  # "!"


def test_prompt_syntax_on_sdxl_uses_both_encoders(make_services, checkpoint_files, tmp_path):
    services = services_with_only("sdxl", make_services, checkpoint_files, tmp_path)
    plain, _ = generate(services, prompt="a cat")
    assert same(plain, generate(services, prompt="(a cat:1.0)")[0])
    assert not same(plain, generate(services, prompt="(a cat:1.4)")[0])
    assert not same(generate(services, prompt=LONG_PREFIX + ", a cat")[0],
                    generate(services, prompt=LONG_PREFIX + ", a dog")[0])
    # The tiny SDXL model settles its image in the first steps, so alternation (dog on steps 1-2) shows best.
    alternating, _ = generate(services, prompt="a [dog|cat]", steps=4)
    assert not same(alternating, generate(services, prompt="a cat", steps=4)[0])
    assert not same(alternating, generate(services, prompt="a dog", steps=4)[0])


def test_scheduled_sdxl_conditioning_swaps_both_embeddings(make_services, checkpoint_files, tmp_path):
    """The step callback hands the pipeline the next step's prompt and pooled embeddings, negative first."""
    from backend.prompts.context import JobNetworks
    from backend.prompts.encoding import PromptEncoder

    services = services_with_only("sdxl", make_services, checkpoint_files, tmp_path)
    with services.models.lease(None) as (_, model):
        encoder = PromptEncoder(model.pipeline, model.family)
        job = JobNetworks(encoder, "a [cat:dog:2]", "[ugly:blurry:1]")
        arguments = job.pipeline_arguments(steps=4, batch=2, on_step=lambda pipe, step, t, tensors: tensors)
        cat, dog = encoder.encode("a cat"), encoder.encode("a dog")
        ugly, blurry = encoder.encode("ugly"), encoder.encode("blurry")

        class Pipe:
            do_classifier_free_guidance = True

        tensors = {"latents": None, "prompt_embeds": arguments["prompt_embeds"].repeat(2, 1, 1)}
        assert arguments["callback_on_step_end_tensor_inputs"] == ["latents", "prompt_embeds", "add_text_embeds"]
        assert (arguments["prompt_embeds"][1] == cat.embeds[0]).all()
        assert (arguments["negative_pooled_prompt_embeds"][0] == ugly.pooled[0]).all()
        after_step_1 = arguments["callback_on_step_end"](Pipe(), 1, None, dict(tensors))  # step 2 comes next
        assert after_step_1["prompt_embeds"].shape == (4, *cat.embeds.shape[1:])
        assert (after_step_1["prompt_embeds"][0] == blurry.embeds[0]).all()  # negative half first
        assert (after_step_1["prompt_embeds"][2] == cat.embeds[0]).all()  # "cat" up to step 2
        assert (after_step_1["add_text_embeds"][3] == cat.pooled[0]).all()
        after_step_2 = arguments["callback_on_step_end"](Pipe(), 2, None, dict(tensors))
        assert (after_step_2["prompt_embeds"][3] == dog.embeds[0]).all()
        assert (after_step_2["add_text_embeds"][0] == blurry.pooled[0]).all()


# --- LoRA ---------------------------------------------------------------------------------------------------

@pytest.fixture
def lora_services(make_services, models_dir):
    write_kohya_lora(models_dir / "Lora" / "kohya_style.safetensors", seed=1)
    write_diffusers_lora(models_dir / "Lora" / "sub" / "diffusers_style.safetensors", seed=2)
    write_kohya_lora(models_dir / "Lora" / "xl_only.safetensors", family="sdxl", seed=3)
    return make_services()


def test_lora_formats_change_the_image_and_the_base_comes_back_exactly(lora_services):
    base, _ = generate(lora_services, prompt="a cat")
    kohya, result = generate(lora_services, prompt="a cat <lora:kohya_style:1>")
    assert not same(base, kohya) and not result.warnings
    assert same(base, generate(lora_services, prompt="a cat")[0])  # nothing of the LoRA is left behind
    diffusers_style, _ = generate(lora_services, prompt="a cat <lora:diffusers_style:0.8>")
    assert not same(base, diffusers_style) and not same(kohya, diffusers_style)
    both, _ = generate(lora_services, prompt="a cat <lora:kohya_style:1> <lora:diffusers_style:0.8>")
    assert not same(both, kohya) and not same(both, diffusers_style)
    negative, _ = generate(lora_services, prompt="a cat <lora:kohya_style:-1>")
    assert not same(negative, base) and not same(negative, kohya)
    assert same(base, generate(lora_services, prompt="a cat")[0])


def test_lora_weight_zero_equals_no_lora(lora_services):
    base, _ = generate(lora_services, prompt="a cat")
    zero, _ = generate(lora_services, prompt="a cat <lora:kohya_style:0>")
    assert same(base, zero)


def test_lora_hashes_in_infotext_are_a1111s_addnet_hash(lora_services, models_dir):
    _, result = generate(lora_services, prompt="a cat <lora:kohya_style:0.7>")
    path = models_dir / "Lora" / "kohya_style.safetensors"
    data = path.read_bytes()
    header = struct.unpack("<Q", data[:8])[0]
    expected = hashlib.sha256(data[8 + header:]).hexdigest()[:12]
    parsed = parse_infotext(result.images[0].infotext)
    assert parsed["Lora hashes"] == f"kohya_style: {expected}"
    assert parsed["Prompt"] == "a cat <lora:kohya_style:0.7>"  # the tag stays in the recorded prompt


def test_unknown_or_foreign_lora_is_a_warning_and_the_image_is_the_base(lora_services):
    base, _ = generate(lora_services, prompt="a cat")
    typo, result = generate(lora_services, prompt="a cat <lora:kohya_styel:1>")
    assert same(base, typo)
    assert result.warnings == [f"LoRA kohya_styel ignored: no such file in {lora_services.networks.loras.folder}"]
    foreign, result = generate(lora_services, prompt="a cat <lora:xl_only:1>")
    assert same(base, foreign)
    assert any("xl_only" in w and "made for SDXL" in w for w in result.warnings)
    assert "Lora hashes" not in parse_infotext(result.images[0].infotext)


# --- embeddings ---------------------------------------------------------------------------------------------

@pytest.fixture
def embedding_services(make_services, models_dir):
    embeddings = models_dir.parent / "embeddings"
    write_embedding(embeddings / "shinystyle.safetensors", width=32, seed=1)
    write_embedding(embeddings / "oldstyle.pt", width=32, seed=2)
    write_embedding(embeddings / "diffusersstyle.bin", width=32, seed=3)
    write_embedding(embeddings / "widestyle.safetensors", width=768, seed=4)
    return make_services()


def test_embedding_names_in_the_prompt_change_the_image(embedding_services):
    base, _ = generate(embedding_services, prompt="a cat")
    for name in ("shinystyle", "oldstyle", "diffusersstyle"):
        image, result = generate(embedding_services, prompt=f"a cat, {name}")
        plain_word, _ = generate(embedding_services, prompt=f"a cat, {name}x")  # not the embedding's name
        assert not same(image, base) and not same(image, plain_word), name
        hashes = parse_infotext(result.images[0].infotext)["TI hashes"]
        assert hashes.startswith(f"{name}: ") and len(hashes.split(": ")[1]) == 12
    assert embedding_services.networks.token_counter("shinystyle")[0] == 2  # two vectors


def test_embedding_for_another_model_is_reported(embedding_services):
    base, _ = generate(embedding_services, prompt="a cat")
    image, result = generate(embedding_services, prompt="a cat, widestyle")
    assert any("widestyle ignored" in w and "768" in w for w in result.warnings)
    _, missing = generate(embedding_services, prompt="a cat, embedding:nosuchstyle")
    assert any("nosuchstyle not found" in w for w in missing.warnings)


def test_embedding_pickle_with_code_is_refused_without_running_it(make_services, models_dir, tmp_path):
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import torch
    folder = models_dir.parent / "embeddings"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"string_to_param": {"*": torch.zeros(1, 32)}, "evil": Payload()}, str(folder / "evil.pt"))
    services = make_services()
    _, result = generate(services, prompt="a cat, evil")
    assert not marker.exists()
    assert any(w.startswith("embedding evil ignored") for w in result.warnings)


# --- VAE and clip skip --------------------------------------------------------------------------------------

def test_vae_choice_changes_the_image_and_is_recorded(make_services, models_dir):
    write_vae(models_dir / "VAE" / "other.vae.safetensors")
    services = make_services()
    base, _ = generate(services, prompt="a cat", sd_vae="None")
    automatic, _ = generate(services, prompt="a cat")  # no VAE named after the checkpoint: its own
    chosen, result = generate(services, prompt="a cat", sd_vae="other.vae.safetensors")
    assert same(base, automatic)
    assert not same(base, chosen)
    parsed = parse_infotext(result.images[0].infotext)
    data = (models_dir / "VAE" / "other.vae.safetensors").read_bytes()
    assert parsed["VAE"] == "other.vae.safetensors"
    assert parsed["VAE hash"] == hashlib.sha256(data).hexdigest()[:10]
    assert request_fields(parsed)["sd_vae"] == "other.vae.safetensors"


def test_automatic_vae_is_the_one_named_after_the_checkpoint(make_services, models_dir):
    write_vae(models_dir / "Stable-diffusion" / "tiny-sd1.vae.safetensors")
    services = make_services()
    own, _ = generate(services, prompt="a cat", checkpoint="tiny-sd1.safetensors", sd_vae="None")
    automatic, result = generate(services, prompt="a cat", checkpoint="tiny-sd1.safetensors")
    assert not same(own, automatic)
    assert parse_infotext(result.images[0].infotext)["VAE"] == "tiny-sd1.vae.safetensors"


def test_clip_skip_changes_the_image_and_round_trips(services):
    one, result_one = generate(services, prompt="a cat")
    two, result_two = generate(services, prompt="a cat", clip_skip=2)
    assert not same(one, two)
    assert "Clip skip" not in result_one.images[0].infotext  # 1 is A1111's default and is not written
    parsed = parse_infotext(result_two.images[0].infotext)
    assert parsed["Clip skip"] == "2" and request_fields(parsed)["clip_skip"] == 2
    deep, result = generate(services, prompt="a cat", clip_skip=12)  # the tiny text encoder has 2 layers
    assert same(deep, two) and any("clip skip 12" in w for w in result.warnings)


def test_a_file_that_is_not_a_fitting_vae_is_a_warning(make_services, models_dir):
    write_embedding(models_dir / "VAE" / "not-a-vae.safetensors", width=32)
    services = make_services()
    own, _ = generate(services, prompt="a cat", sd_vae="None")
    image, result = generate(services, prompt="a cat", sd_vae="not-a-vae.safetensors")
    assert same(own, image)
    assert any(w.startswith("VAE not-a-vae.safetensors ignored") for w in result.warnings), result.warnings
    assert "VAE:" not in result.images[0].infotext
