"""The Settings tab in headless Chromium: options applied from the page change the next image's file; the form
values saved as defaults are what the page opens with after a reload, until restored."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from backend.core.image_metadata import read_infotext
from tests.browser import open_page
from tests.server_process import ServerProcess
from tests.test_ui_browser import set_slider, wait_until_done


@pytest.fixture
def server(tmp_path, models_dir):
    process = ServerProcess(tmp_path, models_dir, "--ckpt", "tiny-sd1.safetensors").start()
    yield process
    process.stop()


@pytest.fixture
def page(server):
    with open_page(server.url + "/") as tab:
        yield tab


def open_settings(page):
    page.get_by_role("tab", name="Settings").click()
    page.wait_for_selector("#setting_samples_format")


def test_jpeg_chosen_in_settings_is_the_next_image_with_exif_infotext(server, page, tmp_path):
    open_settings(page)
    page.locator("#setting_jpeg_quality input").fill("500")
    page.locator("#settings_submit").click()
    page.wait_for_function("document.querySelector('#settings_result')?.innerText.includes('jpeg_quality: must be "
                           "from 1 to 100')", timeout=30_000)
    page.locator("#setting_jpeg_quality input").fill("90")
    page.locator("#setting_samples_format input").click()
    page.get_by_role("option", name="jpg", exact=True).click()
    page.locator("#settings_submit").click()
    page.wait_for_function("document.querySelector('#settings_result')?.innerText.includes('2 settings changed: "
                           "jpeg_quality, samples_format')", timeout=30_000)
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["samples_format"] == "jpg" and stored["jpeg_quality"] == 90

    page.locator("#settings_search input, #settings_search textarea").first.fill("jpeg")
    page.wait_for_function("document.querySelector('#setting_samples_format') === null || "
                           "document.querySelector('#setting_samples_format').offsetParent === null", timeout=30_000)
    assert page.locator("#setting_jpeg_quality").is_visible()

    page.get_by_role("tab", name="txt2img").click()
    page.locator("#txt2img_prompt textarea").fill("a red circle")
    for elem_id, value in (("txt2img_width", 64), ("txt2img_height", 64), ("txt2img_steps", 2)):
        set_slider(page, elem_id, value)
    page.locator("#txt2img_seed input").fill("321")
    page.locator("#txt2img_generate").click()
    wait_until_done(page, "txt2img")
    infotext = page.locator("#txt2img_infotext textarea").input_value()
    saved = sorted(server.outputs.rglob("*.jpg"))
    assert [path.name for path in saved] == ["00000-321.jpg"] and not list(server.outputs.rglob("*-321.png"))
    with Image.open(saved[0]) as image:
        assert image.format == "JPEG" and read_infotext(image) == infotext and "Seed: 321" in infotext


def test_form_defaults_saved_reloaded_and_restored(server, page, tmp_path):
    page.locator("#txt2img_prompt textarea").fill("my usual prompt")
    set_slider(page, "txt2img_steps", 7)
    page.get_by_role("tab", name="img2img").click()
    set_slider(page, "img2img_steps", 9)
    open_settings(page)
    page.locator("#settings_defaults").get_by_text("Defaults").first.click()
    page.locator("#defaults_save").click()
    page.wait_for_function("document.querySelector('#defaults_result')?.innerText.includes('Saved')",
                           timeout=30_000)
    saved = json.loads((tmp_path / "ui-config.json").read_text())
    assert saved == {"txt2img/Prompt/value": "my usual prompt", "txt2img/Sampling steps/value": 7,
                     "img2img/Sampling steps/value": 9}

    page.reload()
    page.wait_for_function("document.querySelector('#txt2img_prompt textarea')?.value === 'my usual prompt'",
                           timeout=30_000)
    assert page.locator("#txt2img_steps input[type=number]").input_value() == "7"
    page.get_by_role("tab", name="img2img").click()
    assert page.locator("#img2img_steps input[type=number]").input_value() == "9"

    open_settings(page)
    page.locator("#settings_defaults").get_by_text("Defaults").first.click()
    page.locator("#defaults_restore").click()
    page.wait_for_function("document.querySelector('#defaults_result')?.innerText.includes('Restored')",
                           timeout=30_000)
    assert not (tmp_path / "ui-config.json").exists()
    page.reload()
    page.wait_for_selector("#txt2img_steps input[type=number]")
    assert page.locator("#txt2img_prompt textarea").input_value() == ""
    assert page.locator("#txt2img_steps input[type=number]").input_value() == "20"
