"""A batch whose images have prompts of their own: each image gets its own (scheduled, padded) conditioning."""
from __future__ import annotations

import pytest

from tests.test_prompt_networks import services_with_only

LONG = ", ".join(["a tall red brick house"] * 20)  # more than 75 tokens: two chunks


class Pipe:
    do_classifier_free_guidance = True


def keep(pipe, step, timestep, tensors):
    return tensors


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_each_image_gets_its_own_scheduled_padded_conditioning(make_services, checkpoint_files, tmp_path, family):
    from backend.prompts.context import JobNetworks
    from backend.prompts.encoding import PromptEncoder

    services = services_with_only(family, make_services, checkpoint_files, tmp_path)
    with services.models.lease(None) as (_, model):
        encoder = PromptEncoder(model.pipeline, model.family)
        job = JobNetworks(encoder, "a cat", "ugly", written=("a cat", "ugly"),
                          clean=lambda prompt, negative: (prompt, negative))
        assert job.for_images([("a cat", "ugly")] * 3) is job  # nobody chose per image: the job's own
        batch = job.for_images([("a [cat:dog:2]", "ugly"), (LONG, "blurry"), ("a cat", "ugly")])
        arguments = batch.pipeline_arguments(steps=4, batch=3, on_step=keep)
        cat, dog, long = encoder.encode("a cat"), encoder.encode("a dog"), encoder.encode(LONG)
        ugly, blurry, empty = encoder.encode("ugly"), encoder.encode("blurry"), encoder.encode("")
        width = cat.embeds.shape[-1]
        assert arguments["prompt_embeds"].shape == (3, 2 * 77, width)  # padded to the longest prompt's 2 chunks
        assert (arguments["prompt_embeds"][0, :77] == cat.embeds[0]).all()
        assert (arguments["prompt_embeds"][0, 77:] == empty.embeds[0]).all()
        assert (arguments["prompt_embeds"][1] == long.embeds[0]).all()
        assert (arguments["negative_prompt_embeds"][1, :77] == blurry.embeds[0]).all()
        assert (arguments["negative_prompt_embeds"][2, :77] == ugly.embeds[0]).all()
        if family == "sdxl":
            assert (arguments["pooled_prompt_embeds"][1] == long.pooled[0]).all()
            assert (arguments["negative_pooled_prompt_embeds"][1] == blurry.pooled[0]).all()
        tensors = {"latents": None, "prompt_embeds": arguments["prompt_embeds"].repeat(2, 1, 1)}
        after_step_2 = arguments["callback_on_step_end"](Pipe(), 2, None, dict(tensors))
        embeds = after_step_2["prompt_embeds"]
        assert embeds.shape == (6, 2 * 77, width)  # negatives first, then the prompts
        assert (embeds[0, :77] == ugly.embeds[0]).all() and (embeds[1, :77] == blurry.embeds[0]).all()
        assert (embeds[3, :77] == dog.embeds[0]).all()  # only the first image's prompt moved on
        assert (embeds[5, :77] == cat.embeds[0]).all() and (embeds[4] == long.embeds[0]).all()
        if family == "sdxl":
            assert (after_step_2["add_text_embeds"][3] == dog.pooled[0]).all()
        with pytest.raises(ValueError):
            batch.pipeline_arguments(steps=4, batch=2, on_step=keep)


def test_a_tag_only_some_images_bring_is_said_not_applied(make_services, checkpoint_files, tmp_path):
    from backend.core.requests import Txt2ImgRequest

    services = services_with_only("sd1", make_services, checkpoint_files, tmp_path)
    request = Txt2ImgRequest(prompt="a cat", steps=2, width=64, height=64)
    with services.models.lease(None) as (entry, model), services.networks.prepare(request, model, entry.path) as job:
        texts = job.for_images([("a dog <lora:style:0.5>", "(ugly"), ("a cat", "")]).texts
        assert texts == [("a dog ", "(ugly"), ("a cat", "")]
        assert any("<lora:style>" in warning and "ignored" in warning for warning in job.warnings)
        assert any("negative prompt" in warning for warning in job.warnings)  # the unbalanced "(" is said
