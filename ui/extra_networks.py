"""A1111's "Extra networks" panel: a card per LoRA and per embedding (its preview picture when a same-named
image sits beside the file); clicking a card adds its tag to the prompt."""
from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from PIL import Image, ImageDraw

from backend.services import Services
from ui.generation_form import PRIVATE

CARD_SIZE = 160
DEFAULT_LORA_WEIGHT = 1  # A1111's "extra_networks_default_multiplier"


def placeholder_card(name: str) -> Image.Image:
    """A card for a file without a preview: its name on a colour derived from the name."""
    colour = tuple(64 + b % 128 for b in hashlib.sha256(name.encode()).digest()[:3])
    card = Image.new("RGB", (CARD_SIZE, CARD_SIZE), colour)
    draw = ImageDraw.Draw(card)
    lines = [name[i:i + 14] for i in range(0, min(len(name), 56), 14)]
    for row, line in enumerate(lines):
        draw.text((8, 8 + 16 * row), line, fill=(255, 255, 255))
    return card


def lora_tag(name: str) -> str:
    return f"<lora:{name}:{DEFAULT_LORA_WEIGHT}>"


def add_to_prompt(prompt: str | None, tag: str) -> str:
    """Append a tag; a LoRA tag already in the prompt is taken out instead (clicking its card again undoes it)."""
    prompt = prompt or ""
    if tag.startswith("<") and tag in prompt:
        return " ".join(prompt.replace(tag, " ").split())
    if not prompt.strip():
        return tag
    return prompt.rstrip() + (" " if tag.startswith("<") or prompt.rstrip().endswith(",") else ", ") + tag


def empty_text(kind: str, folder: Path) -> str:
    """What an empty card tab says: where the files it lists go (relative to the app when inside it)."""
    shown = folder.resolve()
    if shown.is_relative_to(Path.cwd()):
        shown = shown.relative_to(Path.cwd())
    return (f'<div class="extra-networks-empty">No {kind} found in <code>{html.escape(shown.as_posix())}</code>. '
            "Put files there and press 🔄 Refresh.</div>")


@dataclass
class NetworkCards:
    loras: list[tuple[str, object]]  # (name, card image or preview path)
    embeddings: list[tuple[str, object]]


def collect_cards(services: Services) -> NetworkCards:
    networks = services.networks
    loras = [(e.name, str(e.preview) if e.preview else placeholder_card(e.name)) for e in networks.loras.entries]
    embeddings = [(e.name, str(e.preview) if e.preview else placeholder_card(e.name))
                  for e in networks.embeddings.files.entries]
    return NetworkCards(loras, embeddings)


def build_extra_networks(services: Services, prefix: str, prompt: gr.Textbox):
    """The panel under a tab's prompt row; cards insert into `prompt`."""
    cards = collect_cards(services)
    with gr.Accordion("Extra networks", open=False, elem_id=f"{prefix}_extra_networks"):
        with gr.Row():
            refresh = gr.Button("🔄 Refresh", elem_id=f"{prefix}_extra_networks_refresh", scale=0, min_width=110)
            gr.Markdown("Click a card to add it to the prompt (a LoRA card again takes it out). LoRAs go in "
                        "`models/Lora/`, embeddings in `embeddings/`; a same-named .png beside a file is its picture.")
        with gr.Tabs():
            with gr.Tab("Lora", id=f"{prefix}_lora_tab"):
                lora_empty = gr.HTML(empty_text("LoRA", services.networks.loras.folder), visible=not cards.loras,
                                     elem_id=f"{prefix}_lora_empty")
                # fit_columns=False: a single card keeps a card's size instead of stretching over the row
                lora_gallery = gr.Gallery(value=[(image, name) for name, image in cards.loras], columns=6,
                                          height=260, allow_preview=False, show_label=False, fit_columns=False,
                                          visible=bool(cards.loras), elem_id=f"{prefix}_lora_cards")
            with gr.Tab("Textual Inversion", id=f"{prefix}_ti_tab"):
                ti_empty = gr.HTML(empty_text("embedding", services.networks.embeddings.files.folder),
                                   visible=not cards.embeddings, elem_id=f"{prefix}_ti_empty")
                ti_gallery = gr.Gallery(value=[(image, name) for name, image in cards.embeddings], columns=6,
                                        height=260, allow_preview=False, show_label=False, fit_columns=False,
                                        visible=bool(cards.embeddings), elem_id=f"{prefix}_ti_cards")
    names = gr.State({"lora": [name for name, _ in cards.loras], "ti": [name for name, _ in cards.embeddings]})

    def on_refresh():
        services.networks.refresh()
        fresh = collect_cards(services)
        return (gr.Gallery(value=[(image, name) for name, image in fresh.loras], visible=bool(fresh.loras)),
                gr.Gallery(value=[(image, name) for name, image in fresh.embeddings], visible=bool(fresh.embeddings)),
                {"lora": [name for name, _ in fresh.loras], "ti": [name for name, _ in fresh.embeddings]},
                gr.HTML(visible=not fresh.loras), gr.HTML(visible=not fresh.embeddings))

    def insert(kind: str):
        def on_select(text: str, known: dict, event: gr.SelectData):
            shown = known[kind]
            if event.index is None or event.index >= len(shown):
                return gr.update()
            name = shown[event.index]
            return add_to_prompt(text, lora_tag(name) if kind == "lora" else name)
        return on_select

    refresh.click(on_refresh, outputs=[lora_gallery, ti_gallery, names, lora_empty, ti_empty], **PRIVATE)
    lora_gallery.select(insert("lora"), inputs=[prompt, names], outputs=prompt, **PRIVATE)
    ti_gallery.select(insert("ti"), inputs=[prompt, names], outputs=prompt, **PRIVATE)
