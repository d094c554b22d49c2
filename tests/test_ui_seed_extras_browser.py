"""The "Extra" seed row (variation seed with 🎲/♻️, strength, resize-from), Tiling and the Refiner accordion in
headless Chromium: hidden until asked for, their values reach the image's infotext, and PNG Info sends them
back."""
from __future__ import annotations

import shutil

import pytest
from PIL import Image, PngImagePlugin

from tests.server_process import ServerProcess, shared_models_dir

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
playwright = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoint_files):
    root = tmp_path_factory.mktemp("seed_extras")
    process = ServerProcess(root, shared_models_dir(root, checkpoint_files), "--ckpt", "tiny-sd1.safetensors").start()
    yield process.url + "/"
    process.stop()


@pytest.fixture
def page(server):
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync"])
        tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        tab.goto(server)
        tab.wait_for_selector("#txt2img_seed", timeout=120_000)
        yield tab
        browser.close()


def set_number(page, elem_id: str, value):
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def generate_and_read_infotext(page, expected: str) -> str:
    page.locator("#txt2img_generate").click()
    page.wait_for_function(
        f"document.querySelector('#txt2img_infotext textarea').value.includes({expected!r})", timeout=120_000)
    return page.locator("#txt2img_infotext textarea").input_value()


def small_fast_job(page):
    page.locator("#txt2img_prompt textarea").fill("a red circle")
    for elem_id, value in (("txt2img_width", 64), ("txt2img_height", 64), ("txt2img_steps", 3)):
        set_number(page, elem_id, value)
    page.locator("#txt2img_seed input").fill("1234")


def test_extra_seed_row_variation_seed_buttons_and_infotext(page):
    subseed = page.locator("#txt2img_subseed")
    assert not subseed.is_visible()  # hidden until "Extra" is ticked, as in A1111
    page.locator("#txt2img_subseed_show input").check()
    subseed.wait_for(state="visible")
    for elem_id, label in (("subseed", "Variation seed"), ("subseed_strength", "Variation strength"),
                           ("seed_resize_from_w", "Resize seed from width"),
                           ("seed_resize_from_h", "Resize seed from height")):
        control = page.locator(f"#txt2img_{elem_id}")
        assert control.is_visible() and label in control.inner_text(), label
    small_fast_job(page)
    page.locator("#txt2img_subseed input").fill("77")
    set_number(page, "txt2img_subseed_strength", 0.5)
    infotext = generate_and_read_infotext(page, "Variation seed: 77")
    assert "Seed: 1234," in infotext and "Variation seed strength: 0.5" in infotext
    page.locator("#txt2img_random_subseed").click()
    page.wait_for_function("document.querySelector('#txt2img_subseed input').value === '-1'", timeout=10_000)
    page.locator("#txt2img_reuse_subseed").click()  # the shown image's variation seed
    page.wait_for_function("document.querySelector('#txt2img_subseed input').value === '77'", timeout=10_000)
    # Extra unticked: the variation options are off, whatever the hidden fields hold (A1111's behaviour)
    page.locator("#txt2img_subseed_show input").uncheck()
    page.locator("#txt2img_seed input").fill("1235")
    infotext = generate_and_read_infotext(page, "Seed: 1235,")
    assert "Variation seed" not in infotext


def test_tiling_checkbox_and_axes_reach_the_infotext(page):
    small_fast_job(page)
    page.locator("#txt2img_tiling input").check()
    page.get_by_label("X only").check()
    infotext = generate_and_read_infotext(page, "Tiling: True")
    assert "Tiling axes: X" in infotext


def test_png_info_sends_variation_and_tiling_back_and_ticks_extra(page, tmp_path):
    text = ("a lighthouse\nSteps: 17, Sampler: Euler, CFG scale: 4.5, Seed: 4242, Size: 64x64, Variation seed: 99, "
            "Variation seed strength: 0.25, Seed resize from: 128x96, Tiling: True")
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (16, 16), "white").save(tmp_path / "varied.png", pnginfo=info)
    page.get_by_role("tab", name="PNG Info").click()
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(tmp_path / "varied.png"))
    page.wait_for_function("document.querySelector('#pnginfo_parameters textarea').value.includes('lighthouse')",
                           timeout=30_000)
    page.locator("#pnginfo_send_txt2img").click()
    page.wait_for_function("document.querySelector('#txt2img_subseed input')?.value === '99'", timeout=30_000)
    assert page.locator("#txt2img_subseed_show input").is_checked()
    page.locator("#txt2img_subseed").wait_for(state="visible")
    assert page.locator("#txt2img_subseed_strength input[type=number]").input_value() == "0.25"
    assert page.locator("#txt2img_seed_resize_from_w input[type=number]").input_value() == "128"
    assert page.locator("#txt2img_seed_resize_from_h input[type=number]").input_value() == "96"
    assert page.locator("#txt2img_tiling input").is_checked()


def test_refiner_accordion_runs_the_refiner_and_png_info_sends_it_back(page, tmp_path):
    small_fast_job(page)
    page.locator("#txt2img_refiner").get_by_text("Refiner").first.click()
    page.locator("#txt2img_enable_refiner input").check()
    page.locator("#txt2img_refiner_checkpoint input").click()
    page.get_by_role("option", name="tiny-sd1-other.safetensors", exact=False).click()
    set_number(page, "txt2img_refiner_switch_at", 0.5)
    infotext = generate_and_read_infotext(page, "Refiner switch at: 0.5")
    assert "Refiner: tiny-sd1-other [" in infotext and "Model: tiny-sd1," in infotext
    # pasted back: the refiner and its switch point return, the accordion's switch on
    page.locator("#txt2img_enable_refiner input").uncheck()
    set_number(page, "txt2img_refiner_switch_at", 0.9)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", infotext)
    Image.new("RGB", (16, 16), "white").save(tmp_path / "refined.png", pnginfo=info)
    page.get_by_role("tab", name="PNG Info").click()
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(tmp_path / "refined.png"))
    page.wait_for_function("document.querySelector('#pnginfo_parameters textarea').value.includes('Refiner')",
                           timeout=30_000)
    page.locator("#pnginfo_send_txt2img").click()
    page.wait_for_function(
        "document.querySelector('#txt2img_refiner_switch_at input[type=number]')?.value === '0.5'", timeout=30_000)
    assert page.locator("#txt2img_enable_refiner input").is_checked()
    assert page.locator("#txt2img_refiner_checkpoint input").input_value().startswith("tiny-sd1-other.safetensors")
