"""Headless Chromium for the browser tests: the page of a running server, and the waits they share."""
from __future__ import annotations

import shutil
from contextlib import contextmanager

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync"]
playwright = pytest.importorskip("playwright.sync_api")


@contextmanager
def open_page(url: str):
    """A fresh browser on `url` (1400x1000), closed afterwards."""
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 1000})
            tab.goto(url)
            yield tab
        finally:
            browser.close()
