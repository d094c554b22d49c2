"""Day-to-day use in headless Chromium, measured as the user sees it: model fallbacks, warnings-free events,
non-image uploads, the inpaint brush, layout and the footer."""
from __future__ import annotations

import re

import pytest

from tests.server_process import ServerProcess
from tests.test_ui_browser import CHROMIUM, set_slider, wait_until_done

playwright = pytest.importorskip("playwright.sync_api")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync"]


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoint_files):
    """Tiny SD1 models, no LoRA, one embedding (a single extra-network card), the REST API on."""
    import os

    from tests.tiny_networks import write_embedding

    root = tmp_path_factory.mktemp("day_to_day")
    folder = root / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    for key in ("sd1", "sd1_other"):
        os.link(checkpoint_files[key], folder / checkpoint_files[key].name)
    write_embedding(root / "embeddings" / "shiny.safetensors", width=32, vectors=3)
    process = ServerProcess(root, root / "models", "--ckpt", "tiny-sd1.safetensors", "--api").start()
    yield process
    process.stop()


@pytest.fixture
def page(server):
    with playwright.sync_playwright() as driver:
        browser, tab = open_page(driver, server.url + "/")
        yield tab
        browser.close()


def server_warnings(server) -> list[str]:
    return [line for line in server.log_path.read_text().splitlines()
            if re.search(r"Warning\b|WARNING|Traceback", line) and "--listen" not in line]


def open_page(driver, url: str):
    browser = driver.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.wait_for_selector("#txt2img_prompt textarea")
    return browser, page


def test_broken_first_checkpoints_are_skipped_listed_and_never_selected(tmp_path, models_dir):
    from tests.test_broken_checkpoints import add_broken_checkpoints

    add_broken_checkpoints(models_dir)
    process = ServerProcess(tmp_path, models_dir).start()
    try:
        with playwright.sync_playwright() as driver:
            browser, page = open_page(driver, process.url + "/")
            page.wait_for_function("document.querySelector('#checkpoint input')?.value.startsWith('tiny-sd1-other')",
                                   timeout=60_000)
            page.wait_for_selector("#checkpoint_status .checkpoint-failures", timeout=30_000)
            listed = page.locator("#checkpoint_status").inner_text()
            assert "aa-evil.ckpt contains Python objects" in listed and "ab-truncated.safetensors" in listed
            assert "weights_only" not in listed
            page.locator("#checkpoint input").click()
            options = page.get_by_role("option").all_inner_texts()
            assert any(o.startswith("aa-evil.ckpt") and o.endswith("(cannot be loaded)") for o in options), options
            page.keyboard.press("Escape")
            for elem_id, value in (("txt2img_width", 64), ("txt2img_height", 64), ("txt2img_steps", 2)):
                set_slider(page, elem_id, value)
            page.get_by_role("button", name="Generate").click()
            wait_until_done(page, "txt2img")  # on the first model that loads, without touching the picker
            assert page.locator("#txt2img_infotext textarea").input_value().endswith("Model: tiny-sd1-other")
            browser.close()
    finally:
        process.stop()


def test_interrupt_and_skip_clicks_log_no_warnings(server, page):
    page.locator("#txt2img_prompt textarea").fill("a long job")
    for elem_id, value in (("txt2img_width", 64), ("txt2img_height", 64), ("txt2img_steps", 150),
                           ("txt2img_batch_count", 3)):
        set_slider(page, elem_id, value)
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function("document.querySelector('#txt2img_progress')?.innerText.includes('Step')",
                           timeout=60_000)
    page.locator("#txt2img_skip").click()
    page.wait_for_function("document.querySelector('#txt2img_progress')?.innerText.includes('batch 2/3')",
                           timeout=60_000)
    page.locator("#txt2img_interrupt").click()
    page.wait_for_selector("#txt2img_progress .job-done", timeout=60_000)  # so both handlers have returned
    assert server_warnings(server) == []
