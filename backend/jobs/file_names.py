"""A1111's file and folder name patterns (`samples_filename_pattern`, `directories_filename_pattern`): `[tag]`s
replaced by facts of the image, as A1111's FilenameGenerator does. A tag with no value for this image (such as
[batch_number] in a batch of one) drops out together with the text before it; an unknown tag stays as written.
Every value is made safe for a file name; a folder pattern may use "/" for sub-folders, never "..".
"""
from __future__ import annotations

import datetime
import hashlib
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

INVALID_CHARACTERS = '#<>:"/\\|?*' + "".join(map(chr, range(32))) + "\x7f"
MAX_PART_LENGTH = 128  # characters one tag may put into a name (A1111's limit)
MAX_NAME_BYTES = 200  # a whole file name, below the 255 bytes file systems allow, leaving room for the number
DEFAULT_DATETIME_FORMAT = "%Y%m%d%H%M%S"
TAG = re.compile(r"\[([A-Za-z_]+)((?:<[^<>\[\]]*>){0,2})\]")
NON_LETTERS = re.compile(r"[\s" + re.escape(string.punctuation) + r"]+")
NOTHING = object()  # the tag has no value for this image: drop it and the text before it


@dataclass(frozen=True)
class ImageFacts:
    """What a name pattern can say about one image."""
    seed: int | None = None
    prompt: str = ""
    negative_prompt: str = ""
    steps: int | None = None
    cfg_scale: float | None = None
    sampler: str = ""
    scheduler: str = ""
    width: int | None = None
    height: int | None = None
    model_name: str = ""
    model_hash: str = ""
    styles: tuple[str, ...] = ()
    denoising_strength: float | None = None
    clip_skip: int | None = None
    batch_size: int = 1
    batch_index: int = 0  # position in its batch
    iteration: int = 0  # which batch of the job
    n_iter: int = 1
    job_timestamp: str = ""  # when the job started, %Y%m%d%H%M%S
    now: datetime.datetime = field(default_factory=datetime.datetime.now)


def sanitize_part(text: str, replace_spaces: bool = True) -> str:
    """One value made safe inside a file name: no path separators, control or reserved characters, no leading
    space, no trailing space or dot, at most MAX_PART_LENGTH characters."""
    if replace_spaces:
        text = text.replace(" ", "_")
    text = text.translate({ord(character): "_" for character in INVALID_CHARACTERS})
    return text.lstrip(" ")[:MAX_PART_LENGTH].rstrip(" .")


def _hash8(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _datetime(facts: ImageFacts, time_format: str | None = None, zone: str | None = None) -> str:
    moment = facts.now
    if zone:
        try:
            moment = moment.astimezone(ZoneInfo(zone))
        except (ValueError, ZoneInfoNotFoundError, OSError):
            pass  # an unknown or malformed zone: local time, as A1111 does
    try:
        text = moment.strftime(time_format or DEFAULT_DATETIME_FORMAT)
    except (ValueError, TypeError):
        text = moment.strftime(DEFAULT_DATETIME_FORMAT)
    return sanitize_part(text, replace_spaces=False)


def _prompt_words(facts: ImageFacts, max_words: int) -> str:
    words = [word for word in NON_LETTERS.split(facts.prompt) if word] or ["empty"]
    return sanitize_part(" ".join(words[:max_words]), replace_spaces=False)


def _batch_number(facts: ImageFacts):
    return NOTHING if facts.batch_size == 1 else facts.batch_index + 1


def _generation_number(facts: ImageFacts):
    if facts.n_iter == 1 and facts.batch_size == 1:
        return NOTHING
    return facts.iteration * facts.batch_size + facts.batch_index + 1


def _optional(value):
    return NOTHING if value is None or value == "" else value


# tag -> (facts, max prompt words, <arguments>) -> value; A1111's names and meanings
TAGS: dict[str, Callable[..., object]] = {
    "seed": lambda f, _w: _optional(f.seed),
    "steps": lambda f, _w: _optional(f.steps),
    "cfg": lambda f, _w: _optional(f.cfg_scale),
    "width": lambda f, _w: _optional(f.width),
    "height": lambda f, _w: _optional(f.height),
    "sampler": lambda f, _w: sanitize_part(f.sampler, replace_spaces=False),
    "scheduler": lambda f, _w: sanitize_part(f.scheduler, replace_spaces=False),
    "sampler_scheduler": lambda f, _w: sanitize_part(f"{f.sampler} {f.scheduler}".strip(), replace_spaces=False),
    "styles": lambda f, _w: sanitize_part(", ".join(f.styles) or "None", replace_spaces=False),
    "model_name": lambda f, _w: sanitize_part(f.model_name, replace_spaces=False),
    "model_hash": lambda f, _w: _optional(f.model_hash),
    "date": lambda f, _w: f.now.date().isoformat(),
    "datetime": lambda f, _w, *arguments: _datetime(f, *arguments),
    "job_timestamp": lambda f, _w: _optional(f.job_timestamp),
    "prompt": lambda f, _w: sanitize_part(f.prompt),
    "prompt_no_styles": lambda f, _w: sanitize_part(f.prompt, replace_spaces=False),
    "prompt_spaces": lambda f, _w: sanitize_part(f.prompt, replace_spaces=False),
    "prompt_words": _prompt_words,
    "prompt_hash": lambda f, _w: _hash8(f.prompt),
    "negative_prompt_hash": lambda f, _w: _hash8(f.negative_prompt),
    "full_prompt_hash": lambda f, _w: _hash8(f"{f.prompt} {f.negative_prompt}"),
    "batch_number": lambda f, _w: _batch_number(f),
    "batch_size": lambda f, _w: f.batch_size,
    "generation_number": lambda f, _w: _generation_number(f),
    "denoising": lambda f, _w: _optional(f.denoising_strength),
    "clip_skip": lambda f, _w: _optional(f.clip_skip),
    "user": lambda f, _w: NOTHING,  # jobs are not tied to a user name here
    "none": lambda f, _w: "",  # only the number (A1111: "[none]" as the whole pattern)
}


def apply_pattern(pattern: str, facts: ImageFacts, max_prompt_words: int = 8) -> str:
    """`pattern` with its tags replaced (tag names are case-insensitive, as in A1111)."""
    result, position = [], 0
    for match in TAG.finditer(pattern):
        text = pattern[position:match.start()]
        position = match.end()
        fill = TAGS.get(match.group(1).lower())
        arguments = re.findall(r"<([^<>]*)>", match.group(2))
        value = fill(facts, max_prompt_words, *arguments) if fill else None
        if value is NOTHING:
            continue
        result.append(text + (match.group(0) if value is None else str(value)))
    result.append(pattern[position:])
    return "".join(result)


def file_stem(pattern: str, facts: ImageFacts, max_prompt_words: int = 8) -> str:
    """A file name (without number or extension): separators in the pattern's own text become "_" too."""
    stem = sanitize_part(apply_pattern(pattern, facts, max_prompt_words), replace_spaces=False) if pattern else ""
    encoded = stem.encode()[:MAX_NAME_BYTES]
    return encoded.decode(errors="ignore").rstrip(" .")


def folder_parts(pattern: str, facts: ImageFacts, max_prompt_words: int = 8) -> list[str]:
    """The sub-folders a folder pattern names ("/" or "\\" separate them); empty, "." and ".." parts are dropped,
    so the result always stays inside the folder it is joined to."""
    text = apply_pattern(pattern, facts, max_prompt_words)
    parts = [sanitize_part(part, replace_spaces=False) for part in re.split(r"[/\\]", text)]
    return [part.encode()[:MAX_NAME_BYTES].decode(errors="ignore") for part in parts if part.strip(". ")]
