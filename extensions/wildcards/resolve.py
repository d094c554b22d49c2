"""Prompt templates: `{a|b|c}` picks one alternative, `__name__` a random line of wildcards/name.txt.

One left-to-right pass with a seeded RNG, so the same template and seed always give the same prompt.
Anything else (A1111's `[a|b]`, `(x:1.2)`, `<lora:x:1>`, unbalanced braces) is copied as it is.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

MAX_DEPTH = 10  # wildcard files may refer to each other (even in a loop): stop there, keep the rest as text
ESCAPES = {"\\{": "{", "\\}": "}"}
# Starts with a letter or digit; then word characters, "-" and "/" for sub-folders. No dots and no leading "/":
# a name cannot point outside the folder.
WILDCARD = re.compile(r"__([^\W_][\w/-]*?)__")


def resolve(template: str, rng: random.Random, folder: Path, depth: int = 0) -> str:
    out, i = [], 0
    while i < len(template):
        if template[i:i + 2] in ESCAPES:
            out.append(ESCAPES[template[i:i + 2]])
            i += 2
        elif template[i] == "{" and (group := _group(template, i)):
            options, i = group
            out.append(resolve(rng.choice(options), rng, folder, depth))  # an option may hold more groups
        elif template.startswith("__", i) and (wildcard := WILDCARD.match(template, i)):
            out.append(_wildcard(wildcard, rng, folder, depth))
            i = wildcard.end()
        else:
            out.append(template[i])
            i += 1
    return "".join(out)


def _group(text: str, start: int) -> tuple[list[str], int] | None:
    """The top-level options of the `{...}` opening at `start`, and the index after its `}`; None if unclosed."""
    options, nesting, begin, i = [], 0, start + 1, start + 1
    while i < len(text):
        if text[i:i + 2] in ESCAPES:
            i += 2
            continue
        if text[i] == "{":
            nesting += 1
        elif text[i] == "}" and nesting:
            nesting -= 1
        elif text[i] in "|}" and not nesting:
            options.append(text[begin:i])
            begin = i + 1
            if text[i] == "}":
                return options, i + 1
        i += 1
    return None


def _wildcard(match: re.Match, rng: random.Random, folder: Path, depth: int) -> str:
    lines = wildcard_lines(folder / f"{match.group(1)}.txt") if depth < MAX_DEPTH else []
    if not lines:
        return match.group(0)  # unknown, empty or too deep: left as written
    return resolve(rng.choice(lines), rng, folder, depth + 1)


def wildcard_lines(path: Path) -> list[str]:
    """The non-empty lines that are not `#` comments; read on every use, so edits apply to the next image."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: files saved by Windows Notepad start with a BOM
    except (FileNotFoundError, IsADirectoryError):
        return []
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
