"""The bundled wildcards extension: its resolver directly, then loaded from a copy of its folder through services."""
from __future__ import annotations

import importlib.util
import random
import shutil
from pathlib import Path

import pytest

from backend.core.infotext import parse_infotext
from backend.core.requests import Txt2ImgRequest

EXTENSION = Path(__file__).resolve().parents[1] / "extensions" / "wildcards"
TINY = dict(steps=2, width=64, height=64, save_images=False)
COLOURS = {"red", "green", "blue", "yellow", "orange", "purple", "white", "black"}  # tools/shapes_world.py
SHAPES = {"circle", "square", "triangle", "star"}


def _load_resolver():
    spec = importlib.util.spec_from_file_location("wildcards_resolve_under_test", EXTENSION / "resolve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.resolve


resolve = _load_resolver()


def resolutions(template: str, folder: Path, seeds=range(40)) -> list[str]:
    return [resolve(template, random.Random(f"{seed}"), folder) for seed in seeds]


# --- the resolver --------------------------------------------------------------------------------------------

def test_alternatives_pick_one_option_varied_by_seed_and_fixed_for_a_seed(tmp_path):
    results = resolutions("a {red|green|blue} circle", tmp_path)
    assert set(results) == {"a red circle", "a green circle", "a blue circle"}
    assert results == resolutions("a {red|green|blue} circle", tmp_path)


def test_nested_and_empty_alternatives(tmp_path):
    assert set(resolutions("{a {big|small}|b} thing", tmp_path)) == {"a big thing", "a small thing", "b thing"}
    assert set(resolutions("{|very }big", tmp_path)) == {"big", "very big"}


def test_escaped_braces_are_literal_and_unbalanced_ones_are_kept(tmp_path):
    assert set(resolutions(r"\{a|b\} {x|y}", tmp_path)) == {"{a|b} x", "{a|b} y"}
    assert set(resolutions(r"{\{x\}|y}", tmp_path)) == {"{x}", "y"}
    assert set(resolutions("open {a|b and close} }", tmp_path)) == {"open a }", "open b and close }"}
    assert set(resolutions("never {closed {x|y}", tmp_path)) == {"never {closed x", "never {closed y"}


def test_a1111_syntax_is_left_alone(tmp_path):
    template = r"[cat|dog] (red:1.2) [a:b:0.5] <lora:shapes:0.8> \(literal\) AND x"
    assert resolve(template, random.Random("3"), tmp_path) == template


def test_wildcards_use_lines_of_files_recursively_and_skip_comments(tmp_path):
    (tmp_path / "colours").mkdir()
    (tmp_path / "colours" / "warm.txt").write_text("# warm ones\n\nred\n  orange  \n# yellow\n")
    (tmp_path / "thing.txt").write_text("{big|small} __colours/warm__ box\n")
    assert set(resolutions("__colours/warm__", tmp_path)) == {"red", "orange"}
    assert set(resolutions("a __thing__", tmp_path)) == {f"a {size} {colour} box" for size in ("big", "small")
                                                        for colour in ("red", "orange")}


def test_unknown_empty_and_unsafe_wildcards_are_left_as_written(tmp_path):
    folder = tmp_path / "wildcards"
    folder.mkdir()
    (folder / "empty.txt").write_text("# nothing here\n\n")
    (tmp_path / "secret.txt").write_text("outside\n")
    template = "__missing__ __empty__ __../secret__ __/etc/hostname__ __init__"
    assert resolve(template, random.Random("0"), folder) == template


def test_wildcards_that_refer_to_themselves_stop_after_ten_levels(tmp_path):
    (tmp_path / "loop.txt").write_text("x __loop__\n")
    assert resolve("__loop__", random.Random("0"), tmp_path) == "x " * 10 + "__loop__"


def test_bundled_files_fit_the_demo_model():
    assert set(resolutions("__colour__", EXTENSION / "wildcards")) == COLOURS
    assert set(resolutions("__shape__", EXTENSION / "wildcards")) == SHAPES


# --- the extension, loaded from a copy of its folder ---------------------------------------------------------

@pytest.fixture
def wildcards_dir(tmp_path) -> Path:
    """The copy's own wildcards folder: tests may add files to it."""
    shutil.copytree(EXTENSION, tmp_path / "extensions" / "wildcards", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path / "extensions" / "wildcards" / "wildcards"


@pytest.fixture
def wc_services(make_services, wildcards_dir):
    return make_services(extensions_dir=wildcards_dir.parent.parent)


def generate(services, **fields) -> dict:
    job = services.jobs.run_and_wait(Txt2ImgRequest(**{**TINY, **fields}), timeout=300)
    assert job.status == "done", job.error
    (image,) = job.result.images
    return parse_infotext(image.infotext)


def test_extension_loads_with_a_section_in_both_tabs(wc_services):
    record = next(record for record in wc_services.extensions.records if record.name == "wildcards")
    assert record.loaded and record.error is None and record.version == "1.1"
    (section,) = wc_services.extensions.hooks.sections
    assert section.title == "Wildcards" and section.tabs == ("txt2img", "img2img")
    import gradio as gr
    with gr.Blocks():
        components = section.build("img2img")
    assert list(components) == ["enabled"]
    assert isinstance(components["enabled"], gr.Checkbox) and components["enabled"].value is True
    assert components["enabled"].elem_id == "img2img_wildcards_enabled"


def test_hook_resolves_prompt_and_negative_prompt_by_seed(wc_services):
    hooks = wc_services.extensions.hooks
    request = Txt2ImgRequest(prompt="a {red|green|blue} __shape__", seed=0,
                             negative_prompt="{blurry|dark}, __colour__")
    prompts = set()
    for seed in range(8):
        prompt, negative_prompt = hooks.run_image_prompt(request, seed, index=seed)
        colour, shape = prompt.removeprefix("a ").split(" ")
        assert colour in {"red", "green", "blue"} and shape in SHAPES
        negative, negative_colour = negative_prompt.split(", ")
        assert negative in {"blurry", "dark"} and negative_colour in COLOURS
        assert (prompt, negative_prompt) == hooks.run_image_prompt(request, seed, index=0)  # the seed decides
        prompts.add(prompt)
    assert len(prompts) >= 2
    assert not hooks.hook_errors


def test_each_image_of_a_batch_resolves_with_its_own_seed_and_records_it(wc_services):
    template = "a {red|green|blue|yellow|orange|purple|white|black} __shape__"
    job = wc_services.jobs.run_and_wait(Txt2ImgRequest(**{**TINY, "batch_size": 4, "n_iter": 2}, prompt=template,
                                                       negative_prompt="{blurry|dark}", seed=100), timeout=300)
    assert job.status == "done", job.error
    images = job.result.images
    assert [image.seed for image in images] == list(range(100, 108))
    for image in images:  # the prompt each image was made with is the one its seed gives, and the one recorded
        parameters = parse_infotext(image.infotext)
        assert image.prompt == resolve(template, random.Random(f"{image.seed}"), EXTENSION / "wildcards")
        assert parameters["Prompt"] == image.prompt and parameters["Negative prompt"] == image.negative_prompt
        assert image.negative_prompt in {"blurry", "dark"}
        assert parameters["Wildcard prompt"] == template and parameters["Seed"] == str(image.seed)
    assert len({image.prompt for image in images}) >= 4  # not one choice for the whole job
    again = generate(wc_services, prompt=template, negative_prompt="{blurry|dark}", seed=images[5].seed)
    assert again["Prompt"] == images[5].prompt  # an image's seed alone reproduces its prompt
    assert not wc_services.extensions.hooks.hook_errors


def test_images_with_their_own_prompts_are_drawn_with_them(wc_services, wildcards_dir):
    """Per-image prompts reach the model: each image of a batch equals the same seed generated alone with the
    prompt it recorded (within the batch's numerical noise), and differs from an image with another prompt."""
    import io

    import numpy as np
    from PIL import Image

    (wildcards_dir / "pair.txt").write_text("a red circle on a blue background\nyellow star, black background\n")

    def pixels(image):
        return np.asarray(Image.open(io.BytesIO(image.png)).convert("RGB"), dtype=float)

    job = wc_services.jobs.run_and_wait(Txt2ImgRequest(**{**TINY, "batch_size": 4}, prompt="__pair__", seed=20),
                                        timeout=300)
    assert job.status == "done", job.error
    batch = job.result.images
    assert len({image.prompt for image in batch}) == 2
    for image in batch:
        alone = wc_services.jobs.run_and_wait(Txt2ImgRequest(**TINY, prompt=image.prompt, seed=image.seed,
                                                             extension_args={"wildcards": {"enabled": False}}),
                                              timeout=300).result.images[0]
        assert np.abs(pixels(alone) - pixels(image)).mean() < 1.0, image.prompt


def test_generation_records_resolved_prompt_and_template_and_repeats_with_the_seed(wc_services, wildcards_dir):
    (wildcards_dir / "sizes").mkdir()
    (wildcards_dir / "sizes" / "all.txt").write_text("# added by the test\n{small|big}\n")
    template = r"a __sizes/all__ {__colour__|{green|blue}} __shape__, \{kept\} __unknown__ [a|b] (x:1.2)"
    first = generate(wc_services, prompt=template, negative_prompt="{blurry|dark}", seed=11)
    again = generate(wc_services, prompt=template, negative_prompt="{blurry|dark}", seed=11)
    assert first["Prompt"] == again["Prompt"] and first["Negative prompt"] == again["Negative prompt"]
    head, tail = first["Prompt"].split(", ")
    size, colour, shape = head.removeprefix("a ").split(" ")
    assert size in {"small", "big"} and colour in COLOURS and shape in SHAPES
    assert tail == "{kept} __unknown__ [a|b] (x:1.2)"
    assert first["Negative prompt"] in {"blurry", "dark"}
    assert first["Wildcard prompt"] == template
    assert first["Wildcard negative prompt"] == "{blurry|dark}"
    assert not wc_services.extensions.hooks.hook_errors


def test_disabled_leaves_prompts_unchanged(wc_services):
    template = "a {red|green} __shape__"
    parameters = generate(wc_services, prompt=template, negative_prompt="{blurry|dark}", seed=3,
                          extension_args={"wildcards": {"enabled": False}})
    assert parameters["Prompt"] == template and parameters["Negative prompt"] == "{blurry|dark}"
    assert "Wildcard prompt" not in parameters


def test_prompt_without_wildcards_gets_no_extra_infotext(wc_services):
    parameters = generate(wc_services, prompt="a red star", seed=3)
    assert parameters["Prompt"] == "a red star" and "Wildcard prompt" not in parameters
