"""The result areas in headless Chromium: whole images in every gallery, a second Generate click queued and
shown, progress that counts the user's steps, an interrupt that keeps its image, History listing it, and a
ControlNet unit's preview, detected map and infotext."""
from __future__ import annotations

import io
import os
import re

import pytest
from PIL import Image

from tests.browser import open_page
from tests.server_process import ServerProcess
from tests.test_ui_browser import set_slider, wait_until_done
from tools.tiny_controlnets import write_tiny_controlnet

# What the browser shows of an <img>: the share of the image's width and height inside its box (1 = all of it).
VISIBLE_SHARE = """img => {
    const box = img.getBoundingClientRect(), fit = getComputedStyle(img).objectFit;
    const boxRatio = box.width / box.height, imageRatio = img.naturalWidth / img.naturalHeight;
    if (fit !== 'cover') return {fit, width: 1, height: 1, box: [box.width, box.height]};
    return {fit, width: Math.min(1, boxRatio / imageRatio), height: Math.min(1, imageRatio / boxRatio),
            box: [box.width, box.height]};
}"""
# Every text the progress area shows while a job runs, recorded in the page as it changes.
RECORD_PROGRESS = """selector => {
    window.progressTexts = [];
    const node = document.querySelector(selector);
    new MutationObserver(() => window.progressTexts.push(node.innerText))
        .observe(node, {childList: true, subtree: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoint_files):
    root = tmp_path_factory.mktemp("results-ui")
    checkpoints = root / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    os.link(checkpoint_files["sd1"], checkpoints / checkpoint_files["sd1"].name)
    write_tiny_controlnet(root / "models" / "ControlNet" / "control_sd15_canny.safetensors", "sd1", seed=1,
                          strength=0.3)
    process = ServerProcess(root, root / "models", "--ckpt", "tiny-sd1.safetensors").start()
    yield process
    process.stop()


@pytest.fixture
def page(server):
    with open_page(server.url + "/") as tab:
        yield tab


def stripes(width: int, height: int) -> Image.Image:
    """Green, with a red band along the left edge and a blue one along the right: cropping shows at once."""
    image = Image.new("RGB", (width, height), (0, 200, 0))
    image.paste((220, 0, 0), (0, 0, width // 8, height))
    image.paste((0, 0, 220), (width - width // 8, 0, width, height))
    return image


def edge_colours(element) -> tuple[tuple, tuple]:
    """The colours a screenshot of `element` shows at its left and right image edges (middle row)."""
    shot = Image.open(io.BytesIO(element.screenshot())).convert("RGB")
    row = shot.height // 2
    xs = [x for x in range(shot.width) if shot.getpixel((x, row))[1] < 120 or shot.getpixel((x, row))[0] > 150]
    colours = [shot.getpixel((x, row)) for x in xs]
    reds = [c for c in colours if c[0] > 150 and c[1] < 80 and c[2] < 80]
    blues = [c for c in colours if c[2] > 150 and c[0] < 80 and c[1] < 80]
    return (reds[0] if reds else None), (blues[-1] if blues else None)


# Resolves once the browser has decoded the image: right after a result arrives its <img> may still be loading,
# when naturalWidth/naturalHeight read 0.
IMAGE_LOADED = """img => img.complete && img.naturalWidth > 0 ? true : new Promise((resolve, reject) => {
    img.addEventListener('load', () => resolve(true), {once: true});
    img.addEventListener('error', () => reject(new Error('the image failed to load: ' + img.src)), {once: true});
})"""


def natural_size(locator) -> list[int]:
    locator.evaluate(IMAGE_LOADED)
    return locator.evaluate("img => [img.naturalWidth, img.naturalHeight]")


def assert_whole(page, selector: str):
    page.locator(selector).evaluate_all(f"images => Promise.all(images.map({IMAGE_LOADED}))")
    for share in page.locator(selector).evaluate_all(f"images => images.map({VISIBLE_SHARE})"):
        assert share["width"] == 1 and share["height"] == 1, f"{selector} crops its image: {share}"


def test_every_gallery_shows_the_whole_image_and_a_full_view_on_click(server, page, tmp_path):
    stripes(128, 64).save(tmp_path / "wide.png")
    page.get_by_role("tab", name="Upscale").click()
    page.locator("#upscale_image input[type=file]").set_input_files(str(tmp_path / "wide.png"))
    page.wait_for_selector("#upscale_image img")
    page.locator("#upscale_generate").click()
    wait_until_done(page, "upscale")
    thumbnail = page.locator("#upscale_gallery img").first
    assert natural_size(thumbnail) == [256, 128]
    assert_whole(page, "#upscale_gallery img")
    red, blue = edge_colours(thumbnail)
    assert red and blue, "the thumbnail lost the image's left or right edge"
    thumbnail.click()  # the full view (Gradio's preview) shows the whole image too
    page.wait_for_selector("#upscale_gallery button[aria-label='Fullscreen']")
    large = page.locator("#upscale_gallery .media-button img").first
    assert_whole(page, "#upscale_gallery .media-button img")
    box = large.bounding_box()
    assert box["width"] > 256 * 1.5  # shown larger than the thumbnail grid cell's share of it
    red, blue = edge_colours(large)
    assert red and blue, "the full view lost the image's left or right edge"

    page.get_by_role("tab", name="History").click()
    page.wait_for_selector("#history_gallery img")
    assert_whole(page, "#history_gallery img")
    red, blue = edge_colours(page.locator("#history_gallery img").first)
    assert red and blue, "the History thumbnail lost the image's left or right edge"

    page.get_by_role("tab", name="txt2img").first.click()
    for elem_id, value in (("txt2img_width", 128), ("txt2img_height", 64), ("txt2img_steps", 2)):
        set_slider(page, elem_id, value)
    page.get_by_role("button", name="Generate").click()
    wait_until_done(page, "txt2img")
    width, height = natural_size(page.locator("#txt2img_gallery img").first)
    assert width / height == 2
    assert_whole(page, "#txt2img_gallery img")
    page.get_by_role("tab", name="img2img").first.click()
    page.locator("#img2img_image input[type=file]").set_input_files(str(tmp_path / "wide.png"))
    page.wait_for_selector("#img2img_image img")
    for elem_id, value in (("img2img_width", 128), ("img2img_height", 64), ("img2img_steps", 2)):
        set_slider(page, elem_id, value)
    page.locator("#img2img_generate").click()
    wait_until_done(page, "img2img")
    assert_whole(page, "#img2img_gallery img")


def test_a_second_generate_queues_a_job_and_each_result_is_shown(server, page):
    page.locator("#queue_panel").get_by_text("Queue").click()
    page.locator("#txt2img_prompt textarea").fill("first of two")
    for elem_id, value in (("txt2img_width", 64), ("txt2img_height", 64), ("txt2img_steps", 150),
                           ("txt2img_batch_count", 3)):
        set_slider(page, elem_id, value)
    page.get_by_role("button", name="Generate").click()
    page.wait_for_selector("#txt2img_progress .job-progress", timeout=60_000)
    page.locator("#txt2img_prompt textarea").fill("second of two")
    for elem_id, value in (("txt2img_steps", 2), ("txt2img_batch_count", 1)):
        set_slider(page, elem_id, value)
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function("document.querySelector('#txt2img_progress').innerText.includes('queued (position 2)')",
                           timeout=30_000)
    page.wait_for_function("document.querySelector('#queue_view').innerText.includes('second of two')",
                           timeout=30_000)
    assert "first of two" in page.locator("#queue_view").inner_text()
    page.locator("#txt2img_interrupt").click()  # stops the first job; the queued one runs next
    page.wait_for_function(
        "document.querySelector('#txt2img_infotext textarea').value.startsWith('second of two')", timeout=120_000)
    wait_until_done(page, "txt2img")
    assert page.locator("#txt2img_gallery img").count() == 1
    assert "queued" not in page.locator("#txt2img_progress").inner_text()

    page.get_by_role("tab", name="History").click()
    page.wait_for_selector("#history_jobs .history-job-interrupted")
    jobs = page.locator("#history_jobs").inner_text()
    assert re.search(r"first of two\s+interrupted\s+[1-3]", jobs), jobs  # the image it was making is kept
    assert re.search(r"second of two\s+done\s+1", jobs), jobs
    assert "(interrupted)" in page.locator("#history_gallery").inner_text()


def test_progress_counts_the_users_steps_and_interrupt_keeps_the_image(server, page):
    page.locator("#txt2img_prompt textarea").fill("counted steps")
    page.locator("#txt2img_sampling input").click()
    page.get_by_role("option", name="DPM++ SDE", exact=True).click()
    for elem_id, value in (("txt2img_width", 64), ("txt2img_height", 64), ("txt2img_steps", 12)):
        set_slider(page, elem_id, value)
    page.locator("#txt2img_progress").evaluate("node => node.id")  # mounted
    page.evaluate(RECORD_PROGRESS, "#txt2img_progress")
    page.get_by_role("button", name="Generate").click()
    wait_until_done(page, "txt2img")
    texts = [text for text in page.evaluate("window.progressTexts") if "Step" in text]
    assert texts, "no progress was shown"
    counts = [tuple(map(int, match)) for text in texts for match in re.findall(r"Step (\d+)/(\d+)", text)]
    assert {total for _, total in counts} == {12}, texts  # not 23: the sampler's model calls
    percents = [int(match) for text in texts for match in re.findall(r"\((\d+)%\)", text)]
    assert percents == sorted(percents), texts

    set_slider(page, "txt2img_steps", 150)
    page.evaluate(RECORD_PROGRESS, "#txt2img_progress")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function("/Step ([3-9]|[1-9][0-9])\\//.test(document.querySelector('#txt2img_progress').innerText)",
                           timeout=60_000)
    page.locator("#txt2img_interrupt").click()
    page.wait_for_function("document.querySelector('#txt2img_progress').innerText.includes('Interrupted: 1 image')",
                           timeout=60_000)
    assert "Steps: 150" in page.locator("#txt2img_infotext textarea").input_value()
    assert page.locator("#txt2img_gallery img").count() == 1
    assert any("s left" in text for text in page.evaluate("window.progressTexts"))


def outlined_square(path):
    """A black square on white: its outline is where canny finds edges."""
    image = Image.new("RGB", (64, 64), "white")
    image.paste((0, 0, 0), (16, 16, 48, 48))
    image.save(path)


def test_a_controlnet_unit_previews_edges_and_generates_with_its_map_and_infotext(server, page, tmp_path):
    outlined_square(tmp_path / "square.png")
    page.locator("#txt2img_controlnet").get_by_text("ControlNet", exact=True).first.click()
    unit = "#txt2img_controlnet_unit_0"
    page.locator(f"{unit}_image input[type=file]").set_input_files(str(tmp_path / "square.png"))
    page.wait_for_selector(f"{unit}_image img")
    page.locator(f"{unit}_enable input").check()
    page.locator(f"{unit}_module input").click()
    page.get_by_role("option", name="canny", exact=True).click()
    page.wait_for_function(f"document.querySelector('{unit}_threshold_a')?.innerText.includes('Low Threshold')")
    set_slider(page, "txt2img_controlnet_unit_0_processor_res", 64)
    page.locator(f"{unit}_run_preview").click()
    preview = page.locator(f"{unit}_preview img")
    preview.wait_for(timeout=60_000)
    preview.evaluate(IMAGE_LOADED)
    edges = Image.open(io.BytesIO(page.request.get(preview.get_attribute("src")).body())).convert("L")
    assert edges.size == (64, 64)
    assert edges.getpixel((16, 32)) == 255 or edges.getpixel((15, 32)) == 255  # the square's left side
    assert edges.getpixel((32, 32)) == 0 and edges.getpixel((4, 4)) == 0  # inside and outside: no edge

    page.locator(f"{unit}_model input").click()
    page.get_by_role("option", name=re.compile(r"^control_sd15_canny \[")).click()
    for elem_id, value in (("txt2img_width", 64), ("txt2img_height", 64), ("txt2img_steps", 2),
                           ("txt2img_batch_count", 1)):
        set_slider(page, elem_id, value)
    page.locator("#txt2img_prompt textarea").fill("a square")
    page.get_by_role("button", name="Generate").click()
    wait_until_done(page, "txt2img")
    shown = page.locator("#txt2img_gallery img")
    assert shown.count() == 2  # the image, then the detected map
    detected = Image.open(io.BytesIO(page.request.get(shown.nth(1).get_attribute("src")).body())).convert("L")
    assert detected.size == (64, 64) and detected.getpixel((32, 32)) == 0 and max(detected.getdata()) == 255
    infotext = page.locator("#txt2img_infotext textarea").input_value()
    assert re.search(r'ControlNet 0: "Module: canny, Model: control_sd15_canny \[[0-9a-f]{8}\], Weight: 1\.0, '
                     r'Resize Mode: Crop and Resize, Processor Res: 64, Threshold A: 100\.0', infotext), infotext
    if os.environ.get("CONTROLNET_SCREENSHOT"):  # for a person looking at the accordion
        page.screenshot(path=os.environ["CONTROLNET_SCREENSHOT"], full_page=True)


def test_control_type_filters_the_unit_and_hires_fix_shows_its_option(server, page):
    page.locator("#txt2img_controlnet").get_by_text("ControlNet", exact=True).first.click()
    unit = "#txt2img_controlnet_unit_0"
    page.locator(f"{unit}_control_type").get_by_text("Canny", exact=True).click()
    page.wait_for_function(f"document.querySelector('{unit}_module input')?.value === 'canny'")
    assert page.locator(f"{unit}_model input").input_value().startswith("control_sd15_canny [")
    page.wait_for_function(f"document.querySelector('{unit}_threshold_a')?.innerText.includes('Low Threshold')")
    page.locator(f"{unit}_module input").click()
    offered = page.get_by_role("option").all_inner_texts()
    assert [name.replace("✓", "").strip() for name in offered] == ["none", "canny",
                                                                    "invert (from white bg & black line)"]
    page.keyboard.press("Escape")
    assert not page.locator(f"{unit}_hr_option").is_visible()  # only meaningful with the hires fix
    page.locator("#txt2img_hires_fix").get_by_text("Hires. fix").first.click()
    page.locator("#txt2img_enable_hr input[type=checkbox]").check()
    page.locator(f"{unit}_hr_option").wait_for(state="visible")
    page.locator(f"{unit}_hr_option").get_by_text("Low res only", exact=True).click()
    if os.environ.get("CONTROLNET_SCREENSHOT"):  # for a person looking at the accordion
        page.locator("#txt2img_controlnet").screenshot(path=os.environ["CONTROLNET_SCREENSHOT"])
    page.locator("#txt2img_enable_hr input[type=checkbox]").uncheck()
    page.locator(f"{unit}_hr_option").wait_for(state="hidden")
