"""Take the README's screenshot (docs/screenshot.png): the txt2img tab of a freshly started app (no
checkpoints, so the built-in demo model) after generating a batch of two wide (128x64) images, shown whole.

    python -m tools.take_screenshot docs/screenshot.png

Needs Playwright and a Chromium on PATH (as the browser tests do).
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from tests.server_process import ServerProcess

PROMPT = "big white star in the top left, purple background"
SIZE = (128, 64)  # not square: the gallery shows every image whole, letterboxed


def take_screenshot(path: Path, prompt: str = PROMPT, seed: int = 1, size: tuple[int, int] = SIZE):
    with tempfile.TemporaryDirectory() as workdir:
        models = Path(workdir) / "models"
        models.mkdir()
        server = ServerProcess(Path(workdir), models).start()
        try:
            with sync_playwright() as driver:
                browser = driver.chromium.launch(executable_path=shutil.which("chromium"),
                                                 args=["--no-sandbox", "--disable-gpu"])
                page = browser.new_page(viewport={"width": 1400, "height": 1300})  # the whole gallery in view
                page.goto(server.url + "/")
                page.locator("#txt2img_prompt textarea").fill(prompt)
                for elem_id, value in (("txt2img_batch_size", 2), ("txt2img_width", size[0]),
                                       ("txt2img_height", size[1])):
                    number = page.locator(f"#{elem_id} input[type=number]")
                    number.fill(str(value))
                    number.press("Enter")
                page.locator("#txt2img_seed input").fill(str(seed))
                page.get_by_role("button", name="Generate").click()
                page.wait_for_function("document.querySelector('#txt2img_progress')?.innerText.includes('Done')",
                                       timeout=180_000)
                page.evaluate("window.scrollTo(0, 0)")
                page.wait_for_timeout(1500)  # let the gallery finish laying out
                page.screenshot(path=str(path))
                browser.close()
        finally:
            server.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, nargs="?", default=Path("docs/screenshot.png"))
    parser.add_argument("--prompt", default=PROMPT)
    args = parser.parse_args(argv)
    take_screenshot(args.path, args.prompt)
    print(f"saved {args.path}")


if __name__ == "__main__":
    main()
