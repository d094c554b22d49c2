"""The page follows the loaded model's family (issue 31): the CFG slider's default becomes 1 for Flux (as the API's)
without overriding a value the user set, the Distilled CFG Scale slider shows for Flux only, and the prompt counters
add T5's count and limit for Flux/SD3. In process: the page's own event handler, no browser."""
from __future__ import annotations

import os

import pytest

from ui.layout import build_ui
from ui.model_family import cfg_default


@pytest.fixture
def flow_services(make_services, tmp_path, flow_files, checkpoint_files):
    models = tmp_path / "flow-models"
    (models / "Stable-diffusion").mkdir(parents=True)
    os.link(flow_files["flux_comfy"], models / "Stable-diffusion" / "flux-tiny.safetensors")
    os.link(flow_files["sd3"], models / "Stable-diffusion" / "sd3-tiny.safetensors")
    os.link(checkpoint_files["sd1"], models / "Stable-diffusion" / "tiny-sd1.safetensors")
    (models / "text_encoder").symlink_to(flow_files["text_encoder"])
    return make_services(models_dir=models)


def family_handler(page):
    return next(block.fn for block in page.fns.values()
                if getattr(block.fn, "__qualname__", "").startswith("follow_model_family."))


def test_cfg_default_follows_the_family_but_never_a_users_value():
    assert cfg_default("flux", 7.0, 7.0, 7.0) == (1.0, 1.0)  # the automatic default follows Flux
    kept, automatic = cfg_default("flux", 4.5, 7.0, 7.0)  # the user chose 4.5: it stays
    assert kept == {"__type__": "update"} and automatic == 7.0
    assert cfg_default("sd1", 1.0, 1.0, 7.0) == (7.0, 7.0)  # back to the tab's default for SD
    assert cfg_default("sd1", 3.0, 1.0, 7.0)[0] == {"__type__": "update"}
    assert cfg_default(None, 7.0, 7.0, 7.0)[1] == 7.0  # still loading: nothing changes


def test_the_page_sends_cfg_1_and_shows_distilled_cfg_and_t5_counts_for_flux(flow_services):
    services = flow_services
    services.select_checkpoint("flux-tiny.safetensors")
    page = build_ui(services)
    update = family_handler(page)
    # txt2img and img2img sliders (one set by the user), their automatic values, 4 prompt boxes, their steps
    values = update(7.0, 5.5, 7.0, 7.0, "a red circle", "", "(a red:1.3) circle", "blurry", 20, 20, 20, 20)
    cfgs, automatic, distilled, counters = values[:2], values[2:4], values[4], values[5:]
    assert cfgs[0] == 1.0 and cfgs[1] == {"__type__": "update"}  # the user's 5.5 in img2img stays
    assert automatic == (1.0, 7.0)
    assert distilled["visible"] is True
    tokenizer = services.models.loaded(None).pipeline.tokenizer_2
    words = len(tokenizer("a red circle", add_special_tokens=False).input_ids)
    assert f"· T5 {words}/511" in counters[0] and f"· T5 {words}/511" in counters[2]  # syntax is not read by T5
    assert "/75" in counters[0] and "T5 0/511" in counters[1]

    services.select_checkpoint("sd3-tiny.safetensors")
    values = update(1.0, 5.5, 1.0, 7.0, "a red circle", "", "", "", 20, 20, 20, 20)
    assert values[:2] == (7.0, {"__type__": "update"})  # not Flux: back to the tab's default CFG
    assert values[4]["visible"] is False and "/255" in values[5]  # SD3's T5 reads 256 tokens

    services.select_checkpoint("tiny-sd1.safetensors")
    values = update(7.0, 5.5, 7.0, 7.0, "a red circle", "", "", "", 20, 20, 20, 20)
    assert "T5" not in values[5] and "/75" in values[5]
