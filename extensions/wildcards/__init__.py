"""Wildcards: `{red|green|blue}` and `__colour__` in prompts, resolved for each image from its own seed.

The resolved prompt is what the image is generated with and what its infotext records, so a seed reproduces
its image; the template is kept in the infotext as "Wildcard prompt". Needs extension API 1.1 (per-image prompts).
"""
from __future__ import annotations

import random
from pathlib import Path

from .resolve import resolve

__version__ = "1.1"
WILDCARDS_DIR = Path(__file__).parent / "wildcards"
INFOTEXT_KEYS = {"prompt": "Wildcard prompt", "negative_prompt": "Wildcard negative prompt"}


def register(api):
    if tuple(map(int, api.version.split("."))) < (1, 1):
        raise RuntimeError(f"needs extension API 1.1 or later (per-image prompts); this app has {api.version}")

    def section(tab):
        import gradio as gr
        names = sorted(path.relative_to(WILDCARDS_DIR).with_suffix("").as_posix()
                       for path in WILDCARDS_DIR.rglob("*.txt"))
        enabled = gr.Checkbox(value=True, label="Resolve wildcards", elem_id=f"{tab}_wildcards_enabled",
                              info="{a|b} picks one alternative, __name__ a line of wildcards/name.txt")
        gr.Markdown("Wildcard files: " + (", ".join(f"`__{name}__`" for name in names) or "none"))
        return {"enabled": enabled}

    def choices(text: str, seed: int, stream: str) -> str:
        # Separate streams, so that adding a choice to the negative prompt does not change the prompt's choices.
        return resolve(text, random.Random(f"{seed}{stream}"), WILDCARDS_DIR)

    def image_prompt(info):
        """Each image resolves the templates with its own seed, as Dynamic Prompts does: a batch gets varied
        prompts, and an image's seed alone reproduces its prompt."""
        if not ((info.request.extension_args.get(api.name) or {}).get("enabled", True)):
            return None
        return {"prompt": choices(info.prompt, info.seed, ""),
                "negative_prompt": choices(info.negative_prompt, info.seed, "-negative")}

    def before_save(info):
        # The template beside the image's prompt, when that prompt is what the template gave for this seed.
        request = info.request
        if not ((request.extension_args.get(api.name) or {}).get("enabled", True)):
            return None
        added = {}
        for field, stream in (("prompt", ""), ("negative_prompt", "-negative")):
            template, used = getattr(request, field), getattr(info, field)
            if used != template and used == choices(template, info.seed, stream):
                added[INFOTEXT_KEYS[field]] = template
        return added or None

    api.add_section("Wildcards", section)
    api.on_image_prompt(image_prompt)
    api.on_before_save(before_save)
