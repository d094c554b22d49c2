"""Wildcards: `{red|green|blue}` and `__colour__` in prompts, resolved from the image's seed before generating.

The resolved prompt is what the image is generated with and what its infotext records, so a seed reproduces
its image; the template is kept in the infotext as "Wildcard prompt".
"""
from __future__ import annotations

import random
from pathlib import Path

from .resolve import resolve

__version__ = "1.0"
WILDCARDS_DIR = Path(__file__).parent / "wildcards"
INFOTEXT_KEYS = {"prompt": "Wildcard prompt", "negative_prompt": "Wildcard negative prompt"}


def register(api):
    def section(tab):
        import gradio as gr
        names = sorted(path.relative_to(WILDCARDS_DIR).with_suffix("").as_posix()
                       for path in WILDCARDS_DIR.rglob("*.txt"))
        enabled = gr.Checkbox(value=True, label="Resolve wildcards", elem_id=f"{tab}_wildcards_enabled",
                              info="{a|b} picks one alternative, __name__ a line of wildcards/name.txt")
        gr.Markdown("Wildcard files: " + (", ".join(f"`__{name}__`" for name in names) or "none"))
        return {"enabled": enabled}

    def before_generate(request):
        args = request.extension_args.get(api.name) or {}
        if not args.get("enabled", True):
            return None
        # Separate streams, so that adding a choice to the negative prompt does not change the prompt's choices.
        resolved = {"prompt": resolve(request.prompt, random.Random(f"{request.seed}"), WILDCARDS_DIR),
                    "negative_prompt": resolve(request.negative_prompt, random.Random(f"{request.seed}-negative"),
                                               WILDCARDS_DIR)}
        changed = {field: [getattr(request, field), text] for field, text in resolved.items()
                   if text != getattr(request, field)}
        if not changed:
            return None
        # Before-save hooks only see the changed request: it carries [template, resolved] for the infotext.
        extension_args = {**request.extension_args, api.name: {**args, "templates": changed}}
        return request.model_copy(update={**resolved, "extension_args": extension_args})

    def before_save(info):
        templates = (info.request.extension_args.get(api.name) or {}).get("templates") or {}
        # Only while the prompt is still the one resolved (a generation wrapper may have changed it since).
        return {INFOTEXT_KEYS[field]: template for field, (template, text) in templates.items()
                if getattr(info.request, field) == text} or None

    api.add_section("Wildcards", section)
    api.on_before_generate(before_generate)
    api.on_before_save(before_save)
