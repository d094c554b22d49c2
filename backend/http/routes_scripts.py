"""/sdapi/v1 scripts and script-info: the Script menu's scripts (built in and from extensions), as A1111 lists
them."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from backend.core.scripts import FORM_TABS
from backend.services import Services


def add_script_routes(api: APIRouter, services: Services):
    @api.get("/scripts")
    def scripts() -> dict[str, list[str]]:
        """Each tab's scripts by A1111's lower-case titles: those script_name selects, then the always-on ones."""
        available = [*services.generator.scripts(), *services.generator.always_on_scripts()]
        return {tab: [script.name for script in available if tab in script.tabs] for tab in FORM_TABS}

    @api.get("/script-info")
    def script_info() -> list[dict[str, Any]]:
        """Each script once per tab, always-on ones included, with its arguments in script_args order (label,
        value, minimum, maximum, step, choices)."""
        available = [*services.generator.scripts(), *services.generator.always_on_scripts()]
        return [script.info(tab) for tab in FORM_TABS for script in available if tab in script.tabs]
