"""The real page in headless Chromium: type a prompt, click Generate, see the image; pick a broken model."""
from __future__ import annotations

import shutil

import pytest
from PIL import Image

from tests.server_process import ServerProcess

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
playwright = pytest.importorskip("playwright.sync_api")


@pytest.fixture
def server(tmp_path, models_dir):
    data = (models_dir / "Stable-diffusion" / "tiny-sd1.safetensors").read_bytes()
    (models_dir / "Stable-diffusion" / "zz-broken.safetensors").write_bytes(data[: len(data) // 2])
    process = ServerProcess(tmp_path, models_dir, "--ckpt", "tiny-sd1.safetensors").start()
    yield process.url + "/", process.outputs
    process.stop()


@pytest.fixture
def page(server):
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync"])
        tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        tab.goto(server[0])
        yield tab
        browser.close()


def set_slider(page, elem_id: str, value: int):
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def test_prompt_generate_gallery_and_file_with_infotext(server, page):
    _, outputs = server
    page.locator("#txt2img_prompt textarea").fill("a red circle on a blue background")
    for elem_id, value in (("txt2img_width", 64), ("txt2img_height", 64), ("txt2img_steps", 3)):
        set_slider(page, elem_id, value)
    page.locator("#txt2img_seed input").fill("1234")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_selector("#txt2img_gallery img", timeout=120_000)
    page.wait_for_function("document.querySelector('#txt2img_infotext textarea').value.includes('Seed: 1234')",
                           timeout=30_000)
    infotext = page.locator("#txt2img_infotext textarea").input_value()
    assert infotext.startswith("a red circle on a blue background\n")
    assert "Steps: 3," in infotext and "Size: 64x64" in infotext and "Model: tiny-sd1" in infotext
    files = list((outputs / "txt2img-images").rglob("*.png"))
    assert [f.name for f in files] == ["00000-1234.png"]
    assert Image.open(files[0]).info["parameters"] == infotext
    assert "Done: 1 image(s)" in page.locator("#txt2img_progress").inner_text()


def test_broken_checkpoint_shows_error_and_previous_model_keeps_working(server, page):
    page.locator("#checkpoint input").click()
    page.get_by_role("option", name="zz-broken.safetensors", exact=False).click()
    page.wait_for_selector("#checkpoint_status .job-error", timeout=60_000)
    message = page.locator("#checkpoint_status").inner_text()
    assert "zz-broken.safetensors" in message and "keeping tiny-sd1.safetensors" in message
    for elem_id, value in (("txt2img_width", 64), ("txt2img_height", 64), ("txt2img_steps", 2)):
        set_slider(page, elem_id, value)
    page.get_by_role("button", name="Generate").click()
    page.wait_for_selector("#txt2img_gallery img", timeout=120_000)
    assert "Model: tiny-sd1" in page.locator("#txt2img_infotext textarea").input_value()


def test_out_of_range_seed_is_reported_with_its_field(server, page):
    page.locator("#txt2img_seed input").fill("99999999999")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_selector("#txt2img_progress .job-error", timeout=30_000)
    assert "seed: must be between -1 and 4294967295" in page.locator("#txt2img_progress").inner_text()
    assert not (server[1] / "txt2img-images").exists()
