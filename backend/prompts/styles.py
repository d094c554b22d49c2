"""A1111's prompt styles: `styles.csv` (name, prompt, negative_prompt), applied to a job's prompts, and found again
in a pasted prompt (A1111 writes no "Styles" infotext key: PNG Info / "Send to" infer the styles from the prompt's
text, as its infotext_styles option "Apply" does)."""
from __future__ import annotations

import csv
import io
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from backend.core.requests import MAX_STYLE_NAME, RequestError

FIELDS = ("name", "prompt", "negative_prompt")
PROMPT_PLACEHOLDER = "{prompt}"
MAX_STYLES_FILE_BYTES = 4 * 1024 * 1024  # thousands of styles; a bigger file is not a styles file


class StyleError(RequestError):
    """An unknown style, or a style that cannot be saved (bad name). `field` names the input."""


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


def merge_prompt(style_text: str, prompt: str) -> str:
    """A1111's rule: a style with "{prompt}" puts the prompt there; else the style is appended after ", "."""
    if PROMPT_PLACEHOLDER in style_text:
        return style_text.replace(PROMPT_PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def apply_styles(prompt: str, negative_prompt: str, styles: list[PromptStyle]) -> tuple[str, str]:
    """Each style in turn (the first applied first, so the last one is outermost)."""
    for style in styles:
        prompt = merge_prompt(style.prompt, prompt)
        negative_prompt = merge_prompt(style.negative_prompt, negative_prompt)
    return prompt, negative_prompt


def _remove_style_text(style_text: str, prompt: str) -> tuple[bool, str]:
    """(matched, the prompt without the style's text): A1111's extract_style_text_from_prompt."""
    prompt, style_text = prompt.strip(), style_text.strip()
    if PROMPT_PLACEHOLDER in style_text:
        left, _, right = style_text.partition(PROMPT_PLACEHOLDER)
        if prompt.startswith(left) and prompt.endswith(right) and len(prompt) >= len(left) + len(right):
            return True, prompt[len(left):len(prompt) - len(right)]
        return False, prompt
    if prompt.endswith(style_text):
        rest = prompt[:len(prompt) - len(style_text)]
        return True, rest.removesuffix(", ")
    return False, prompt


def extract_styles(prompt: str, negative_prompt: str, styles: list[PromptStyle]) -> tuple[list[str], str, str]:
    """The styles whose text the prompts end with (or wrap), outermost removed first, as A1111 finds them in a
    pasted infotext: (their names in the order they were applied, the prompt and negative prompt without them)."""
    found: list[str] = []
    candidates = [style for style in styles if style.prompt or style.negative_prompt]
    while True:
        for style in candidates:
            matched, rest = _remove_style_text(style.prompt, prompt)
            matched_negative, rest_negative = _remove_style_text(style.negative_prompt, negative_prompt)
            if matched and matched_negative:
                prompt, negative_prompt = rest, rest_negative
                found.append(style.name)
                candidates.remove(style)
                break
        else:
            return list(reversed(found)), prompt, negative_prompt


class StyleStore:
    """styles.csv, read on each use (another program, or A1111 itself, may edit it) and written atomically."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()  # one writer at a time: read-modify-write of the whole file

    def all(self) -> list[PromptStyle]:
        try:
            if self.path.stat().st_size > MAX_STYLES_FILE_BYTES:
                raise StyleError("styles", f"{self.path.name} is larger than {MAX_STYLES_FILE_BYTES} bytes; "
                                           "not read")
            text = self.path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            return []
        styles: dict[str, PromptStyle] = {}
        for row in csv.DictReader(io.StringIO(text)):
            name = (row.get("name") or "").strip()
            if name:  # A1111 keeps the last of two rows with one name
                styles[name] = PromptStyle(name, row.get("prompt") or "", row.get("negative_prompt") or "")
        return list(styles.values())

    def names(self) -> list[str]:
        return [style.name for style in self.all()]

    def resolve(self, names: list[str], field: str = "styles") -> list[PromptStyle]:
        """The named styles, in the order given; an unknown name is the user's mistake (not ignored)."""
        known = {style.name: style for style in self.all()}
        unknown = [name for name in names if name not in known]
        if unknown:
            raise StyleError(field, f"unknown style {unknown[0]!r}; known: {', '.join(known) or 'none'} "
                                    f"(from {self.path.name})")
        return [known[name] for name in names]

    def save(self, style: PromptStyle):
        """Add the style, or replace the one with its name (keeping its place)."""
        name = style.name.strip()
        if not name or len(name) > MAX_STYLE_NAME or any(ord(char) < 32 for char in name):
            raise StyleError("name", f"a style name is 1 to {MAX_STYLE_NAME} printable characters; got {name!r}")
        with self._lock:
            styles = {existing.name: existing for existing in self.all()}
            styles[name] = PromptStyle(name, style.prompt, style.negative_prompt)
            self._write(list(styles.values()))

    def delete(self, name: str) -> bool:
        with self._lock:
            styles = self.all()
            kept = [style for style in styles if style.name != name]
            if len(kept) == len(styles):
                return False
            self._write(kept)
            return True

    def _write(self, styles: list[PromptStyle]):
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(FIELDS)
        writer.writerows((style.name, style.prompt, style.negative_prompt) for style in styles)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=".styles-", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8", newline="") as temp_file:
                temp_file.write(buffer.getvalue())
                temp_file.flush()
                os.fsync(temp_file.fileno())
            os.replace(temp_name, self.path)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
