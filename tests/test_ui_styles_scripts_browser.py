"""Styles and the Script menu in the real page (headless Chromium): pick a style and generate, save the prompt as
a new style in the editor, apply styles to the prompt with 📋, "Send to img2img" finds the styles again; choose
Prompt matrix in the Script dropdown and generate its grid."""
from __future__ import annotations

import pytest
from PIL import Image

from tests.browser import open_page, playwright
from tests.server_process import ServerProcess, SharedServer, shared_models_dir
from tests.test_ui_browser import set_slider, wait_until_done

STYLES = 'name,prompt,negative_prompt\nCinematic,"{prompt}, film grain",blurry\nOil,oil painting,"photo, 3d"\n'


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory, checkpoint_files):
    root = tmp_path_factory.mktemp("styles_scripts")
    models = shared_models_dir(root, checkpoint_files)
    (root / "styles.csv").write_text(STYLES, encoding="utf-8")
    process = ServerProcess(root, models, "--ckpt", "tiny-sd1.safetensors").start()
    yield SharedServer(process, models)
    process.stop()


@pytest.fixture
def server(shared_server):
    shared_server.mark()
    return shared_server.url + "/", shared_server.models.parent / "styles.csv", shared_server


@pytest.fixture
def page(server):
    with open_page(server[0]) as tab:
        yield tab


def choose_style(page, tab: str, name: str):
    """Type the name, then Enter takes the first match. Focusing the box refreshes its list from styles.csv; on a
    busy machine that answer can arrive after the typing and reset the box, so then the box is left (focus moves
    to the prompt), and the typing is repeated."""
    box = page.locator(f"#{tab}_styles input")
    option = page.locator(f"#{tab}_styles [role=option]", has_text=name).first
    for attempt in range(4):
        box.fill(name)
        try:
            option.wait_for(timeout=10_000)
            break
        except playwright.TimeoutError:
            if attempt == 3:
                raise
            page.keyboard.press("Escape")
            page.locator(f"#{tab}_prompt textarea").click()
    box.press("Enter")
    page.locator(f"#{tab}_styles .token", has_text=name).wait_for()
    page.keyboard.press("Escape")


def test_styles_generate_edit_and_apply(server, page):
    _, styles_file, _ = server
    page.locator("#txt2img_prompt textarea").fill("a cat")
    for elem_id, value in (("txt2img_width", 64), ("txt2img_height", 64), ("txt2img_steps", 2)):
        set_slider(page, elem_id, value)
    choose_style(page, "txt2img", "Oil")
    choose_style(page, "txt2img", "Cinematic")
    page.locator("#txt2img_generate").click()
    wait_until_done(page, "txt2img")
    infotext = page.locator("#txt2img_infotext textarea").input_value()
    assert infotext.startswith("a cat, oil painting, film grain\nNegative prompt: photo, 3d, blurry\n")

    # the editor: the current prompt saved as a new style
    page.locator("#txt2img_prompt textarea").fill("neon lights")
    page.locator("#txt2img_style_edit").click()
    name = page.locator("#txt2img_edit_style_name input")
    name.fill("Neon")
    name.press("Enter")
    page.locator("#txt2img_edit_style_copy").click()
    page.wait_for_function("document.querySelector('#txt2img_edit_style_prompt textarea').value === 'neon lights'")
    page.locator("#txt2img_edit_style_save").click()
    page.wait_for_function("document.querySelector('#txt2img_edit_style_status').innerText.includes('Saved')")
    assert styles_file.read_text().splitlines()[-1] == "Neon,neon lights,"

    # 📋: the selected styles go into the prompt boxes and the selection is cleared
    page.locator("#txt2img_prompt textarea").fill("a dog")
    page.locator("#txt2img_neg_prompt textarea").fill("")
    page.locator("#txt2img_styles .token-remove").first.click()  # keep only Cinematic of the two selected
    page.locator("#txt2img_style_apply").click()
    page.wait_for_function("document.querySelector('#txt2img_prompt textarea').value === 'a dog, film grain'")
    assert page.locator("#txt2img_neg_prompt textarea").input_value() == "blurry"
    assert page.locator("#txt2img_styles .token").count() == 0

    # "Send to img2img": the styles are found again at the ends of the infotext's prompts and taken out of them
    page.locator("#txt2img_send_img2img").click()
    page.wait_for_function("document.querySelector('#img2img_prompt textarea')?.value === 'a cat'")
    assert page.locator("#img2img_neg_prompt textarea").input_value() == ""
    assert page.locator("#img2img_styles .token").all_inner_texts() == ["Oil", "Cinematic"]


def test_script_menu_prompt_matrix(server, page):
    _, _, shared = server
    outputs = shared.outputs
    page.locator("#txt2img_prompt textarea").fill("a cat|red")
    for elem_id, value in (("txt2img_width", 64), ("txt2img_height", 64), ("txt2img_steps", 2)):
        set_slider(page, elem_id, value)
    assert not page.locator("#txt2img_script_prompt_matrix").is_visible()
    page.locator("#txt2img_script input").click()
    offered = [text.split("\n")[-1] for text in page.locator("#txt2img_script [role=option]").all_inner_texts()]
    assert offered[:3] == ["None", "Prompt matrix", "Prompts from file or textbox"] and "X/Y/Z plot" in offered
    page.get_by_role("option", name="Prompt matrix", exact=True).click()
    page.locator("#txt2img_script_prompt_matrix").wait_for(state="visible")
    page.locator("#txt2img_script_prompt_matrix_1 input").check()  # a different seed for each picture
    page.locator("#txt2img_seed input").fill("40")
    page.locator("#txt2img_generate").click()
    wait_until_done(page, "txt2img", images=3)
    assert page.locator("#txt2img_gallery .thumbnail-item").count() == 3  # the grid, then both combinations
    assert page.locator("#txt2img_infotext textarea").input_value().startswith("a cat\n")
    grids = shared.made("txt2img-grids/*/prompt_matrix-*.png")
    assert len(grids) == 1 and Image.open(grids[0]).size == (2 * 64, 20 + 64)
    seeds = sorted(int(path.stem.split("-")[1]) for path in shared.made("txt2img-images/*/*.png"))
    assert seeds == [40, 41]
    page.screenshot(path=str(outputs / "script_menu.png"), full_page=True)

    page.get_by_role("tab", name="img2img").click()
    page.locator("#img2img_script input").click()
    offered = [text.split("\n")[-1] for text in page.locator("#img2img_script [role=option]").all_inner_texts()]
    assert {"Loopback", "SD upscale", "Prompt matrix"} <= set(offered)
    assert "Outpainting mk2" in offered
    page.get_by_role("option", name="Outpainting mk2", exact=True).click()
    section = page.locator("#img2img_script_outpainting_mk2")
    section.wait_for(state="visible")
    assert section.get_by_text("Fall-off exponent (lower=higher detail)").is_visible()
    assert page.locator("#img2img_script_outpainting_mk2_1 input[type=number]").input_value() == "128"
    page.screenshot(path=str(outputs / "script_menu_outpainting_mk2.png"), full_page=True)
