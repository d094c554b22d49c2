"""The real page in headless Chromium: type a prompt, click Generate, see the image; pick a broken model."""
from __future__ import annotations

import json
import re
import shutil
from contextlib import contextmanager

import pytest
from PIL import Image

from tests.server_process import ServerProcess, SharedServer, shared_models_dir

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
playwright = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory, checkpoint_files):
    root = tmp_path_factory.mktemp("browser")
    models = shared_models_dir(root, checkpoint_files)
    data = checkpoint_files["sd1"].read_bytes()
    (models / "Stable-diffusion" / "zz-broken.safetensors").write_bytes(data[: len(data) // 2])
    process = ServerProcess(root, models, "--ckpt", "tiny-sd1.safetensors").start()
    yield SharedServer(process, models)
    process.stop()


@pytest.fixture
def server(shared_server) -> SharedServer:
    return shared_server.mark()


@contextmanager
def open_page(url: str):
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync"])
        tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        tab.goto(url)
        yield tab
        browser.close()


@pytest.fixture
def page(server):
    with open_page(server.url + "/") as tab:
        yield tab


def wait_until_canvas_shows(canvas, rgb, timeout: float = 60):
    """The image editor loads an upload asynchronously; wait until its canvas shows the image's colour."""
    import io
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shot = Image.open(io.BytesIO(canvas.screenshot())).convert("RGB")
        centre = shot.getpixel((shot.width // 2, shot.height // 2))
        if sum(abs(a - b) for a, b in zip(centre, rgb)) < 30:
            return True
        time.sleep(0.25)
    return False


def wait_until_done(page, tab: str, timeout_ms: int = 120_000, images: int = 1):
    """Wait for the tab's progress area to report the finished images (failing with what it shows instead)."""
    try:
        page.wait_for_function(
            f"document.querySelector('#{tab}_progress')?.innerText.includes('Done: {images} image')",
            timeout=timeout_ms)
    except playwright.TimeoutError:
        raise AssertionError(f"{tab} did not finish; its progress area shows: "
                             f"{page.locator(f'#{tab}_progress').inner_text()!r}") from None


def set_slider(page, elem_id: str, value: int):
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def test_prompt_generate_gallery_and_file_with_infotext(server, page):
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
    files = server.made("txt2img-images/**/*.png")
    assert len(files) == 1 and re.fullmatch(r"\d{5}-1234\.png", files[0].name)
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
    assert not server.made("txt2img-images/**/*.png")


def test_png_info_shows_parameters_and_sends_every_field_to_txt2img(server, page, tmp_path):
    from PIL import PngImagePlugin

    from backend.models.hashes import HashCache

    other_hash = HashCache(tmp_path / "h.json").short_hash(
        server.models / "Stable-diffusion" / "tiny-sd1-other.safetensors")
    text = ("a lighthouse at dusk\nNegative prompt: fog\nSteps: 17, Sampler: DPM++ 2M Karras, CFG scale: 4.5, "
            f"Seed: 4242, Size: 128x96, Model hash: {other_hash}, Model: tiny-sd1-other")
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (16, 16), "white").save(tmp_path / "a1111.png", pnginfo=info)
    page.get_by_role("tab", name="PNG Info").click()
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(tmp_path / "a1111.png"))
    page.wait_for_function(
        "document.querySelector('#pnginfo_parameters textarea').value.includes('a lighthouse at dusk')",
        timeout=30_000)
    page.locator("#pnginfo_send_txt2img").click()
    page.wait_for_function("document.querySelector('#txt2img_prompt textarea')?.value === 'a lighthouse at dusk'",
                           timeout=30_000)
    assert page.locator("#txt2img_neg_prompt textarea").input_value() == "fog"
    assert page.locator("#txt2img_steps input[type=number]").input_value() == "17"
    assert page.locator("#txt2img_cfg_scale input[type=number]").input_value() == "4.5"
    assert page.locator("#txt2img_seed input").input_value() == "4242"
    assert page.locator("#txt2img_width input[type=number]").input_value() == "128"
    assert page.locator("#txt2img_height input[type=number]").input_value() == "96"
    assert page.locator("#txt2img_sampling input").input_value() == "DPM++ 2M"
    assert page.locator("#txt2img_scheduler input").input_value() == "Karras"
    assert page.locator("#checkpoint input").input_value().startswith(f"tiny-sd1-other.safetensors [{other_hash}]")


def test_live_preview_queue_panel_and_history_search(server, page):
    page.locator("#txt2img_prompt textarea").fill("history needle")
    for elem_id, value in (("txt2img_width", 64), ("txt2img_height", 64), ("txt2img_steps", 150),
                           ("txt2img_batch_count", 20)):
        set_slider(page, elem_id, value)
    page.locator("#queue_panel").get_by_text("Queue").click()
    page.get_by_role("button", name="Generate").click()
    page.wait_for_selector("#txt2img_gallery :text('Preview, step')", timeout=60_000)
    page.wait_for_selector("#queue_view :text('running')", timeout=30_000)
    assert "history needle" in page.locator("#queue_view").inner_text()
    page.locator("#txt2img_interrupt").click()
    page.wait_for_selector("#txt2img_progress .job-done", timeout=60_000)
    set_slider(page, "txt2img_steps", 2)
    set_slider(page, "txt2img_batch_count", 1)
    page.get_by_role("button", name="Generate").click()
    wait_until_done(page, "txt2img")
    page.get_by_role("tab", name="History").click()
    page.locator("#history_search input, #history_search textarea").first.fill("needle")
    page.locator("#history_refresh").click()
    page.wait_for_selector("#history_gallery img", timeout=30_000)
    page.locator("#history_gallery img").first.click()
    page.wait_for_function("document.querySelector('#history_infotext textarea').value.startsWith('history needle')",
                           timeout=30_000)
    page.locator("#history_search input, #history_search textarea").first.fill("no such prompt")
    page.locator("#history_refresh").click()
    page.wait_for_function("document.querySelectorAll('#history_gallery img').length === 0", timeout=30_000)


def test_inpaint_stroke_drawn_in_the_browser_changes_only_that_area(server, page, tmp_path):
    import numpy as np

    source = Image.new("RGB", (256, 256), (200, 30, 30))
    source.save(tmp_path / "source.png")
    page.get_by_role("tab", name="img2img").first.click()
    page.get_by_role("tab", name="Inpaint", exact=True).click()
    editor = page.locator("#img2img_inpaint_editor")
    editor.locator("canvas").first.wait_for(state="visible")
    page.wait_for_timeout(1000)  # the editor mounts its file input after the tab appears
    for _attempt in range(3):
        editor.locator("input[type=file]").first.set_input_files(str(tmp_path / "source.png"))
        if wait_until_canvas_shows(editor.locator("canvas").first, (200, 30, 30), timeout=20):
            break
    else:
        raise AssertionError("the image editor never showed the uploaded image")
    box = editor.locator("canvas").first.bounding_box()
    centre_x, centre_y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(centre_x - 100, centre_y - 100)
    page.mouse.down()
    for step in range(12):
        page.mouse.move(centre_x - 100 + step * 6, centre_y - 100)
    page.mouse.up()
    for elem_id, value in (("img2img_width", 256), ("img2img_height", 256), ("img2img_steps", 3)):
        set_slider(page, elem_id, value)
    page.locator("#img2img_generate").click()
    wait_until_done(page, "img2img")
    infotext = page.locator("#img2img_infotext textarea").input_value()
    assert "Denoising strength: 0.75" in infotext and "Mask blur: 4" in infotext
    (saved,) = server.made("img2img-images/**/*.png")
    changed = np.abs(np.asarray(Image.open(saved).convert("RGB"), dtype=int)
                     - np.asarray(source, dtype=int)).sum(-1) > 0
    ys, xs = np.nonzero(changed)
    assert changed.any(), "the stroke's area was repainted"
    # the stroke ran across the upper left of the image; nothing changed far from it
    assert ys.max() < 128 and xs.max() < 192
    assert changed.mean() < 0.2


def test_send_txt2img_result_to_img2img(server, page):
    page.locator("#txt2img_prompt textarea").fill("send me along")
    for elem_id, value in (("txt2img_width", 64), ("txt2img_height", 64), ("txt2img_steps", 2)):
        set_slider(page, elem_id, value)
    page.locator("#txt2img_seed input").fill("99")
    page.get_by_role("button", name="Generate").click()
    wait_until_done(page, "txt2img")
    page.locator("#txt2img_send_img2img").click()
    page.wait_for_function("document.querySelector('#img2img_prompt textarea')?.value === 'send me along'",
                           timeout=30_000)
    assert page.locator("#img2img_seed input").input_value() == "99"
    assert page.locator("#img2img_width input[type=number]").input_value() == "64"
    page.wait_for_selector("#img2img_image img", timeout=30_000)
    page.locator("#img2img_denoising_strength input[type=number]").fill("0")
    page.locator("#img2img_denoising_strength input[type=number]").press("Enter")
    page.locator("#img2img_generate").click()
    wait_until_done(page, "img2img")
    (sent,) = server.made("txt2img-images/**/*.png")
    (made,) = server.made("img2img-images/**/*.png")
    assert list(Image.open(sent).convert("RGB").getdata()) == list(Image.open(made).convert("RGB").getdata())


def test_hires_fix_then_send_to_upscale(server, page):
    page.locator("#txt2img_prompt textarea").fill("hires and upscale")
    for elem_id, value in (("txt2img_width", 64), ("txt2img_height", 64), ("txt2img_steps", 2)):
        set_slider(page, elem_id, value)
    page.locator("#txt2img_seed input").fill("5")
    page.locator("#txt2img_hires_fix").get_by_text("Hires. fix").first.click()
    page.locator("#txt2img_enable_hr input[type=checkbox]").check()
    set_slider(page, "txt2img_hires_steps", 2)
    page.get_by_role("button", name="Generate").click()
    wait_until_done(page, "txt2img")
    infotext = page.locator("#txt2img_infotext textarea").input_value()
    assert "Hires upscale: 2" in infotext and "Hires upscaler: Latent" in infotext and "Size: 64x64" in infotext
    (made,) = server.made("txt2img-images/**/*.png")
    assert Image.open(made).size == (128, 128)  # the second pass ran at twice the first pass's size

    page.locator("#txt2img_send_upscale").click()
    page.wait_for_selector("#upscale_image img", timeout=30_000)
    set_slider(page, "upscale_scale", 3)
    page.locator("#upscale_generate").click()
    wait_until_done(page, "upscale")
    (upscaled,) = server.made("extras-images/**/*.png")
    with Image.open(upscaled) as image, Image.open(made) as source:
        assert image.size == (384, 384)
        assert image.info["parameters"] == source.info["parameters"]  # the source's infotext is kept
        assert "Postprocess upscale by: 3" in image.info["postprocessing"]
    assert "Postprocess upscaler: Lanczos" in page.locator("#upscale_info textarea").input_value()


def test_upscale_a_server_folder_to_an_exact_size(server, page, tmp_path):
    folder = tmp_path / "to-upscale"
    folder.mkdir()
    for number, colour in enumerate([(200, 20, 20), (20, 20, 200)]):
        Image.new("RGB", (40, 30), colour).save(folder / f"{number}.png")
    page.get_by_role("tab", name="Upscale").click()
    page.get_by_role("tab", name="Batch from directory").click()
    page.locator("#upscale_input_dir textarea").fill(str(folder))
    page.get_by_role("tab", name="Scale to").click()
    set_slider(page, "upscale_width", 96)
    set_slider(page, "upscale_height", 96)
    page.locator("#upscale_generate").click()
    wait_until_done(page, "upscale", images=2)
    made = server.made("extras-images/**/*.png")
    assert [Image.open(path).size for path in made] == [(96, 96), (96, 96)]  # covered, then cropped to fit
    assert [Image.open(path).convert("RGB").getpixel((48, 48)) for path in made] == [(200, 20, 20), (20, 20, 200)]


@pytest.fixture
def networks_server(tmp_path, models_dir):
    from tests.tiny_networks import write_embedding, write_kohya_lora, write_vae

    write_kohya_lora(models_dir / "Lora" / "style.safetensors", seed=1)
    write_vae(models_dir / "VAE" / "other.safetensors")
    write_embedding(models_dir.parent / "embeddings" / "shiny.safetensors", width=32, vectors=3)
    process = ServerProcess(tmp_path, models_dir, "--ckpt", "tiny-sd1.safetensors").start()
    yield process.url + "/", process.outputs
    process.stop()


@pytest.fixture
def networks_page(networks_server):
    with open_page(networks_server[0]) as tab:
        yield tab


def test_extra_networks_token_counter_vae_clip_skip_and_warnings(networks_page):
    page = networks_page
    prompt = page.locator("#txt2img_prompt textarea")
    prompt.fill("a cat BREAK a dog")
    page.wait_for_function("document.querySelector('#txt2img_token_counter').innerText.trim() === '77/150'",
                           timeout=30_000)
    page.locator("#txt2img_extra_networks").get_by_text("Extra networks").click()
    page.locator("#txt2img_lora_cards img").first.click()
    page.wait_for_function("document.querySelector('#txt2img_prompt textarea').value.endsWith('<lora:style:1>')",
                           timeout=30_000)
    page.get_by_role("tab", name="Textual Inversion").first.click()
    page.locator("#txt2img_ti_cards img").first.click()
    page.wait_for_function("document.querySelector('#txt2img_prompt textarea').value.endsWith(', shiny')",
                           timeout=30_000)
    page.wait_for_function("document.querySelector('#txt2img_token_counter').innerText.trim() === '81/150'",
                           timeout=30_000)  # "a dog , shiny": the LoRA tag counts nothing, the embedding 3
    prompt.fill(prompt.input_value() + " <lora:nosuch:1>")
    page.locator("#sd_vae input").click()
    page.get_by_role("option", name="other.safetensors").click()
    set_slider(page, "clip_skip", 2)
    for elem_id, value in (("txt2img_width", 64), ("txt2img_height", 64), ("txt2img_steps", 2)):
        set_slider(page, elem_id, value)
    page.get_by_role("button", name="Generate").click()
    wait_until_done(page, "txt2img")
    assert "LoRA nosuch ignored" in page.locator("#txt2img_progress .job-warnings").inner_text()
    infotext = page.locator("#txt2img_infotext textarea").input_value()
    assert "Clip skip: 2" in infotext and "VAE: other.safetensors" in infotext
    assert 'Lora hashes: "style: ' in infotext and 'TI hashes: "shiny: ' in infotext
    set_slider(page, "clip_skip", 1)
    page.locator("#txt2img_send_img2img").click()  # the infotext's clip skip comes back with it
    page.wait_for_function("document.querySelector('#clip_skip input[type=number]').value === '2'", timeout=30_000)


@pytest.fixture
def extensions_server(tmp_path, models_dir):
    from tests.extension_fixtures import write_extensions

    folder = write_extensions(tmp_path / "extensions")
    process = ServerProcess(tmp_path, models_dir, "--ckpt", "tiny-sd1.safetensors", "--api",
                            "--extensions-dir", str(folder)).start()
    yield process
    process.stop()


def test_extension_section_tab_assets_errors_and_rest(extensions_server, tmp_path):
    import httpx

    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(extensions_server.url + "/")
        page.wait_for_function("window.probeExtensionLoaded === true", timeout=30_000)  # javascript/*.js ran
        page.get_by_role("tab", name="Extensions").click()
        table = page.locator("#extensions_table").inner_text()
        assert "probe" in table and "loaded" in table and "needs a package that is not installed" in table
        page.get_by_role("tab", name="Probe tab").click()
        content = page.locator("#probe_tab_content")
        assert content.inner_text() == "Probe tab content"
        assert "rgb(1, 2, 3)" in content.evaluate("node => getComputedStyle(node).borderColor")  # style.css
        page.get_by_role("tab", name="txt2img").first.click()
        page.locator("#txt2img_extension_probe").get_by_text("Probe").first.click()
        page.locator("#txt2img_probe_note textarea").fill("change")
        page.locator("#txt2img_prompt textarea").fill("a cat")
        for elem_id, value in (("txt2img_width", 64), ("txt2img_height", 64), ("txt2img_steps", 2)):
            set_slider(page, elem_id, value)
        page.get_by_role("button", name="Generate").click()
        wait_until_done(page, "txt2img")
        infotext = page.locator("#txt2img_infotext textarea").input_value()
        assert infotext.startswith("a cat, probed\n") and "Probe note: change" in infotext
        browser.close()
    with httpx.Client(base_url=extensions_server.url, timeout=300) as http:
        assert http.get("/extensions/probe/ping").json() == {"pong": True, "api_version": "1.3"}
        body = {"prompt": "a dog", "steps": 2, "width": 64, "height": 64, "alwayson_scripts": {"Probe": {"note": "x"}}}
        info = json.loads(http.post("/sdapi/v1/txt2img", json=body).json()["info"])
        assert "Probe note: x" in info["infotexts"][0]
        refused = http.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"nosuch": {"args": []}}})
        assert refused.status_code == 422 and "nosuch" in refused.json()["detail"]
