"""Take the README's ControlNet screenshot (docs/controlnet-scribble.png): a freshly started app (no models, so
the built-in demo model and its demo ControlNet), a hand-drawn-looking scribble of a star uploaded to ControlNet
unit 0 with the invert preprocessor, a colour prompt that names no place, and the result: the generated image and
the detected map in the gallery, shown from the tabs down to the unit's model.

    python -m tools.take_controlnet_screenshot docs/controlnet-scribble.png

Needs Playwright and a Chromium on PATH (as the browser tests do).
"""
from __future__ import annotations

import argparse
import re
import shutil
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from tests.server_process import ServerProcess
from tools.evaluate_demo_controlnet import drawn_outline

PROMPT = "a yellow star on a purple background"
SCRIBBLE = ("star", "top left")
UNIT = "#txt2img_controlnet_unit_0"


def set_number(page, elem_id: str, value: int):
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def take_controlnet_screenshot(path: Path, prompt: str = PROMPT, seed: int = 3):
    with tempfile.TemporaryDirectory() as workdir:
        scribble = Path(workdir) / "scribble.png"
        scribble.write_bytes(drawn_outline(*SCRIBBLE, width=6))
        models = Path(workdir) / "models"
        models.mkdir()
        server = ServerProcess(Path(workdir), models).start()
        try:
            with sync_playwright() as driver:
                browser = driver.chromium.launch(
                    executable_path=shutil.which("chromium"),
                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync"])
                page = browser.new_page(viewport={"width": 1400, "height": 1500})
                page.goto(server.url + "/")
                page.locator("#txt2img_prompt textarea").fill(prompt)
                for elem_id, value in (("txt2img_width", 64), ("txt2img_height", 64)):
                    set_number(page, elem_id, value)
                page.locator("#txt2img_seed input").fill(str(seed))
                page.locator("#txt2img_controlnet").get_by_text("ControlNet", exact=True).first.click()
                page.locator(f"{UNIT}_image input[type=file]").set_input_files(str(scribble))
                page.wait_for_selector(f"{UNIT}_image img")
                page.locator(f"{UNIT}_enable input").check()
                page.locator(f"{UNIT}_module input").click()
                page.get_by_role("option", name=re.compile(r"^invert")).click()
                page.locator(f"{UNIT}_model input").click()
                page.get_by_role("option", name=re.compile(r"^shapes-demo-controlnet \[")).click()
                page.get_by_role("button", name="Generate").click()
                page.wait_for_function("document.querySelector('#txt2img_progress')?.innerText.includes('Done')",
                                       timeout=300_000)
                page.evaluate("window.scrollTo(0, 0)")
                page.wait_for_timeout(1500)  # let the gallery finish laying out
                # from the tabs down to the unit's model: the scribble, the prompt, the result and its map
                top = page.get_by_role("tab", name="txt2img", exact=True).bounding_box()["y"] - 12
                model = page.locator(f"{UNIT}_model").bounding_box()
                bottom = model["y"] + model["height"] + 24
                page.screenshot(path=str(path), full_page=True,
                                clip={"x": 0, "y": top, "width": 1400, "height": bottom - top})
                browser.close()
        finally:
            server.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, nargs="?", default=Path("docs/controlnet-scribble.png"))
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)
    take_controlnet_screenshot(args.path, args.prompt, args.seed)
    print(f"saved {args.path}")


if __name__ == "__main__":
    main()
