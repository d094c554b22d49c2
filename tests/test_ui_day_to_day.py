"""Day-to-day use in headless Chromium, measured as the user sees it: model fallbacks, warnings-free events,
non-image uploads, the inpaint brush, layout and the footer."""
from __future__ import annotations

import contextlib
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


# --- item 5: a file that is not an image ---------------------------------------------------------------------------

NOT_AN_IMAGE = "this file is not an image (PNG, JPEG, WEBP, BMP or GIF)"


def gradio_errors(page) -> tuple[int, int]:
    """(Gradio error toasts, red "Error" badges on components) on the page now."""
    return page.locator("[data-testid='toast-body']").count(), page.get_by_text("Error", exact=True).count()


@pytest.mark.parametrize("tabs, elem_id", [
    (["img2img", "img2img"], "img2img_image"),
    (["img2img", "Inpaint upload"], "img2img_upload_image"),
    (["img2img", "Inpaint upload"], "img2img_upload_mask"),
    (["img2img", "Outpaint"], "img2img_outpaint_image"),
    (["PNG Info"], "pnginfo_image"),
    (["Upscale"], "upscale_image"),
], ids=lambda value: value if isinstance(value, str) else None)
def test_a_text_file_is_said_to_be_no_image_under_its_input_and_nothing_else(server, page, tmp_path, tabs,
                                                                              elem_id):
    from PIL import Image

    (tmp_path / "notimage.png").write_text("this is text, not a picture\n")
    Image.new("RGB", (64, 64), (10, 200, 30)).save(tmp_path / "fine.png")
    for tab in tabs:
        page.get_by_role("tab", name=tab, exact=True).first.click()
    upload = page.locator(f"#{elem_id} input[type=file]")
    upload.set_input_files(str(tmp_path / "notimage.png"))
    status = page.locator(f"#{elem_id}_status")
    page.wait_for_function(f"document.querySelector('#{elem_id}_status')?.innerText.includes({NOT_AN_IMAGE!r})",
                           timeout=30_000)
    assert status.inner_text().strip() == NOT_AN_IMAGE
    assert page.get_by_text(NOT_AN_IMAGE).count() == 1  # said once
    assert page.locator(f"#{elem_id} img").count() == 0  # the file did not stay in the input
    if elem_id == "pnginfo_image":
        assert page.locator("#pnginfo_parameters textarea").input_value() == ""
    assert gradio_errors(page) == (0, 0)
    page.locator(f"#{elem_id} input[type=file]").set_input_files(str(tmp_path / "fine.png"))
    page.wait_for_selector(f"#{elem_id} img", timeout=30_000)
    page.wait_for_function(f"document.querySelector('#{elem_id}_status')?.innerText.trim() === ''", timeout=30_000)
    assert gradio_errors(page) == (0, 0)


def test_the_inpaint_editor_says_a_text_file_is_no_image(server, page, tmp_path):
    (tmp_path / "notimage.png").write_text("this is text, not a picture\n")
    page.get_by_role("tab", name="img2img").first.click()
    page.get_by_role("tab", name="Inpaint", exact=True).click()
    editor = page.locator("#img2img_inpaint_editor")
    editor.locator("canvas").first.wait_for(state="visible")
    editor.locator("input[type=file]").first.set_input_files(str(tmp_path / "notimage.png"))
    page.wait_for_function(
        f"document.querySelector('#img2img_inpaint_editor_status')?.innerText.includes({NOT_AN_IMAGE!r})",
        timeout=30_000)
    assert page.get_by_text(NOT_AN_IMAGE).count() == 1 and gradio_errors(page) == (0, 0)
    assert server_warnings(server) == []


# --- item 11: the inpaint brush -----------------------------------------------------------------------------------

def load_into_editor(page, path, rgb):
    from tests.test_ui_browser import wait_until_canvas_shows

    editor = page.locator("#img2img_inpaint_editor")
    editor.locator("canvas").first.wait_for(state="visible")
    for _ in range(3):
        editor.locator("input[type=file]").first.set_input_files(str(path))
        if wait_until_canvas_shows(editor.locator("canvas").first, rgb, timeout=20):
            return editor
    raise AssertionError("the image editor never showed the uploaded image")


def stroke_colour(page, editor) -> tuple[int, int, int]:
    """Paint a short stroke through the canvas centre; the colour the editor then shows there."""
    import io

    from PIL import Image

    box = editor.locator("canvas").first.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x - 6, y)
    page.mouse.down()
    page.mouse.move(x + 6, y, steps=4)
    page.mouse.up()
    shot = Image.open(io.BytesIO(editor.locator("canvas").first.screenshot())).convert("RGB")
    return shot.getpixel((shot.width // 2, shot.height // 2))


def test_the_mask_is_translucent_and_shows_on_white_and_on_black(server, page, tmp_path):
    from PIL import Image

    page.get_by_role("tab", name="img2img").first.click()
    page.get_by_role("tab", name="Inpaint", exact=True).click()
    seen = {}
    for name, rgb in (("white", (255, 255, 255)), ("black", (0, 0, 0))):
        Image.new("RGB", (64, 64), rgb).save(tmp_path / f"{name}.png")
        editor = load_into_editor(page, tmp_path / f"{name}.png", rgb)
        seen[name] = stroke_colour(page, editor)
        assert sum(abs(a - b) for a, b in zip(seen[name], rgb, strict=True)) > 90, (name, seen[name])  # the mask shows
        editor.locator("button[aria-label='Clear canvas'], button[title='Clear canvas']").first.click()
    # translucent: what is under the mask shows through it (an opaque brush looks the same on both)
    assert sum(abs(a - b) for a, b in zip(seen["white"], seen["black"], strict=True)) > 150, seen


def test_the_brush_is_sized_to_the_image(server, page, tmp_path):
    import numpy as np
    from PIL import Image

    source = Image.new("RGB", (64, 64), (200, 40, 30))
    source.save(tmp_path / "small.png")
    page.get_by_role("tab", name="img2img").first.click()
    page.get_by_role("tab", name="Inpaint", exact=True).click()
    editor = load_into_editor(page, tmp_path / "small.png", (200, 40, 30))
    with contextlib.suppress(playwright.TimeoutError):  # if never: the painted area below says how the brush fits
        page.wait_for_selector("#img2img_inpaint_editor.brush-sized", timeout=30_000)  # the server sized the brush
    stroke_colour(page, editor)
    page.locator("#img2img_inpaint_options").get_by_text("Inpaint options").click()
    set_slider(page, "img2img_mask_blur", 0)
    for elem_id, value in (("img2img_width", 64), ("img2img_height", 64), ("img2img_steps", 2)):
        set_slider(page, elem_id, value)
    page.locator("#img2img_denoising_strength input[type=number]").fill("1")
    page.locator("#img2img_denoising_strength input[type=number]").press("Enter")
    page.locator("#img2img_generate").click()
    wait_until_done(page, "img2img")
    (saved,) = list((server.outputs / "img2img-images").rglob("*.png"))[-1:]
    changed = (np.abs(np.asarray(Image.open(saved).convert("RGB"), dtype=int) - np.asarray(source, dtype=int))
               .sum(-1) > 0)
    # one short stroke: radius 64 / 20 = 3 image pixels, about 12 x 6 pixels painted, not 40% of the image
    assert 0 < changed.mean() < 0.06, changed.mean()


# --- item 13: layout ------------------------------------------------------------------------------------------------

def rect(page, selector: str) -> dict:
    return page.locator(selector).first.evaluate("node => node.getBoundingClientRect().toJSON()")


def text_rect(page, selector: str) -> dict:
    """Where the element's text itself is drawn."""
    return page.locator(selector).first.evaluate(
        "node => { const range = document.createRange(); range.selectNodeContents(node); "
        "return range.getBoundingClientRect().toJSON(); }")


@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
def test_buttons_and_token_counters_sit_where_they_belong(page, tab):
    page.get_by_role("tab", name=tab, exact=True).first.click()
    for name in ("interrupt", "skip"):
        button, text = rect(page, f"#{tab}_{name}"), text_rect(page, f"#{tab}_{name}")
        assert page.locator(f"#{tab}_{name}").evaluate("node => node.scrollWidth <= node.clientWidth")
        assert button["left"] <= text["left"] and text["right"] <= button["right"], (name, button, text)
    for box, counter in ((f"#{tab}_prompt", f"#{tab}_token_counter"),
                         (f"#{tab}_neg_prompt", f"#{tab}_negative_token_counter")):
        outer, shown = rect(page, box), text_rect(page, f"{counter} .token-counter")
        assert shown["width"] > 0 and page.locator(counter).inner_text().strip() == "0/75"
        # in the box's top right corner, on the label's line (A1111's place), not below the box
        assert outer["top"] <= shown["top"] and shown["bottom"] <= outer["top"] + 40, (box, outer, shown)
        assert shown["right"] <= outer["right"] and outer["right"] - shown["right"] < 40, (box, outer, shown)


def test_the_checkpoint_title_stops_before_the_dropdown_arrow(page):
    field = page.locator("#checkpoint input[role=combobox]")
    text_right = field.evaluate("node => node.getBoundingClientRect().right - parseFloat(getComputedStyle(node)"
                                ".paddingRight)")
    arrow = rect(page, "#checkpoint .icon-wrap")
    assert text_right <= arrow["left"] + 1, (text_right, arrow)
    assert field.evaluate("node => getComputedStyle(node).textOverflow") == "ellipsis"


def test_history_shows_every_column_whole(server, page):
    import httpx

    with httpx.Client(base_url=server.url, timeout=300) as http:
        for number in range(7):
            body = {"prompt": f"layout {number}", "steps": 2, "width": 64, "height": 64, "save_images": True}
            assert http.post("/sdapi/v1/txt2img", json=body).status_code == 200
    page.get_by_role("tab", name="History").click()
    page.locator("#history_refresh").click()
    page.wait_for_function("document.querySelectorAll('#history_gallery img').length >= 7", timeout=30_000)
    gallery = rect(page, "#history_gallery")
    thumbnails = page.locator("#history_gallery img").evaluate_all(
        "nodes => nodes.map(node => node.getBoundingClientRect().toJSON())")
    assert len({round(t["top"]) for t in thumbnails}) >= 2  # wrapped onto a second row, not squeezed
    for thumbnail in thumbnails:
        assert gallery["left"] <= thumbnail["left"] and thumbnail["right"] <= gallery["right"], (gallery, thumbnail)


def test_empty_lora_tab_says_so_and_a_single_card_stays_a_card(page):
    page.locator("#txt2img_extra_networks").get_by_text("Extra networks").click()
    page.wait_for_selector("#txt2img_lora_empty", state="visible", timeout=30_000)
    assert re.fullmatch(r"No LoRA found in \S*models/Lora\. Put files there and press .* Refresh\.",
                        page.locator("#txt2img_lora_empty").inner_text().strip())
    assert not page.locator("#txt2img_lora_cards").is_visible()
    page.get_by_role("tab", name="Textual Inversion").first.click()
    page.wait_for_selector("#txt2img_ti_cards img", timeout=30_000)
    card, gallery = rect(page, "#txt2img_ti_cards img"), rect(page, "#txt2img_ti_cards")
    assert card["width"] <= gallery["width"] / 4 and abs(card["width"] - card["height"]) < 2, (card, gallery)
    assert not page.locator("#txt2img_ti_empty").is_visible()


# --- item 14: the footer --------------------------------------------------------------------------------------------

def test_footer_points_at_our_api_docs_and_has_no_second_settings(server, page):
    import httpx

    footer = page.locator("footer")
    assert "Use via API" not in footer.inner_text() and "Settings" not in footer.inner_text()
    assert page.get_by_role("button", name="Settings").count() == 0  # Gradio's settings panel is gone
    assert page.get_by_role("tab", name="Settings").count() == 1  # ours stays
    link = page.locator("#webui_footer a", has_text="API")
    assert link.get_attribute("href") == "/docs"
    with httpx.Client(base_url=server.url, timeout=60) as http:
        docs = http.get(link.get_attribute("href"))
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        assert "/sdapi/v1/txt2img" in http.get("/openapi.json").text
