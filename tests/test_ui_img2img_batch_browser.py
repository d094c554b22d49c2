"""The img2img "Batch" sub-tab and the Restore faces controls, in headless Chromium."""
from __future__ import annotations

import os

import pytest
from PIL import Image, PngImagePlugin

from backend.core.image_metadata import read_infotext
from backend.core.infotext import parse_infotext
from tests.server_process import ServerProcess, SharedServer, shared_models_dir
from tests.test_ui_browser import CHROMIUM, set_slider, wait_until_done

playwright = pytest.importorskip("playwright.sync_api")
SCREENSHOTS = os.environ.get("UI_SCREENSHOTS")  # a folder: save what the tests saw, for a person to look at


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory, checkpoint_files):
    root = tmp_path_factory.mktemp("img2img_batch")
    models = shared_models_dir(root, checkpoint_files)
    process = ServerProcess(root, models, "--ckpt", "tiny-sd1.safetensors").start()
    yield SharedServer(process, models)
    process.stop()


@pytest.fixture
def server(shared_server) -> SharedServer:
    return shared_server.mark()


@pytest.fixture
def page(server):
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync"])
        tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        tab.goto(server.url + "/")
        yield tab
        browser.close()


def shoot(page, name: str):
    if SCREENSHOTS:
        page.screenshot(path=os.path.join(SCREENSHOTS, f"{name}.png"), full_page=True)


def test_batch_tab_processes_a_folder_keeping_names_and_png_info(server, page, tmp_path):
    inputs, outputs = tmp_path / "batch-in", tmp_path / "batch-out"
    inputs.mkdir()
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a lake\nSteps: 2, Sampler: Euler, CFG scale: 5, Seed: 1234, Size: 64x64")
    Image.new("RGB", (64, 64), (200, 30, 30)).save(inputs / "first.png", pnginfo=info)
    Image.new("RGB", (64, 64), (30, 30, 200)).save(inputs / "second.png")
    page.get_by_role("tab", name="img2img", exact=True).first.click()
    page.get_by_role("tab", name="Batch").click()
    page.locator("#img2img_batch_input_dir textarea").fill(str(inputs))
    page.locator("#img2img_batch_output_dir textarea").fill(str(outputs))
    page.locator("#img2img_batch_png_info").get_by_text("PNG info").click()
    page.locator("#img2img_batch_use_png_info input").check()
    page.locator("#img2img_prompt textarea").fill("watercolour")
    set_slider(page, "img2img_steps", 2)
    set_slider(page, "img2img_width", 64)
    set_slider(page, "img2img_height", 64)
    shoot(page, "img2img-batch-tab")
    page.locator("#img2img_generate").click()
    wait_until_done(page, "img2img", images=2)
    shoot(page, "img2img-batch-done")
    assert sorted(path.name for path in outputs.iterdir()) == ["first.png", "second.png"]
    first = parse_infotext(read_infotext(outputs / "first.png"))
    assert (first["Prompt"], first["Seed"]) == ("watercolour a lake", "1234")
    assert page.locator("#img2img_gallery img").count() >= 2  # shown although the folder is not the outputs'
    assert not server.made("img2img-images/**/*.png")
    # the History tab lists the job; the files outside the outputs folder are not offered to the page
    page.get_by_role("tab", name="History").click()
    page.locator("#history_refresh").click()
    page.wait_for_function("document.querySelector('#history_jobs')?.innerText.includes('img2img batch')",
                           timeout=30_000)
    assert page.locator("[data-testid='toast-body']").count() == 0 and page.locator("#history_gallery img").count() == 0


def test_restore_faces_without_a_model_says_where_to_put_one(server, page):
    page.locator("#txt2img_prompt textarea").fill("a portrait")
    set_slider(page, "txt2img_steps", 2)
    page.locator("#txt2img_restore_faces input").check()
    page.get_by_role("button", name="Generate").click()
    page.wait_for_selector("#txt2img_progress .job-error", timeout=60_000)
    shoot(page, "restore-faces-no-model")
    message = page.locator("#txt2img_progress").inner_text()
    assert "restore_faces: no GFPGAN model installed" in message and "GFPGAN" in message
    assert "Traceback" not in message
    page.get_by_role("tab", name="Upscale").click()
    assert page.locator("#extras_gfpgan_visibility").is_visible()


def test_png_info_face_restoration_ticks_restore_faces_and_its_absence_clears_it(server, page, tmp_path):
    def send(text: str, name: str):
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", text)
        Image.new("RGB", (16, 16), "white").save(tmp_path / name, pnginfo=info)
        page.get_by_role("tab", name="PNG Info").click()
        page.locator("#pnginfo_image input[type=file]").set_input_files(str(tmp_path / name))
        first_line = text.split("\n")[0]
        page.wait_for_function(f"document.querySelector('#pnginfo_parameters textarea').value.includes("
                               f"'{first_line}')", timeout=30_000)
        page.locator("#pnginfo_send_txt2img").click()
        page.wait_for_function(f"document.querySelector('#txt2img_prompt textarea')?.value === '{first_line}'",
                               timeout=30_000)

    send("a portrait\nSteps: 3, Sampler: Euler, CFG scale: 5, Seed: 1, Face restoration: GFPGAN, Size: 64x64",
         "restored.png")
    assert page.locator("#txt2img_restore_faces input").is_checked()
    send("a landscape\nSteps: 3, Sampler: Euler, CFG scale: 5, Seed: 1, Size: 64x64", "plain.png")
    assert not page.locator("#txt2img_restore_faces input").is_checked()
