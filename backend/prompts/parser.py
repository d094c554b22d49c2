"""AUTOMATIC1111's prompt language, reproduced with A1111's exact semantics.

- `parse_weighted`: attention weights, `(x)`, `[x]`, `(x:1.3)`, escapes and BREAK.
- `bracket_problems`: warnings for the unbalanced brackets that A1111 silently tolerates.
- `prompt_schedule`: prompt editing `[from:to:when]` and alternation `[a|b]` over sampling steps.
- `extract_extra_networks`: `<kind:name:weights>` tags, removed from the prompt.

Patterns are kept as strings (the `re` module caches their compiled form) so importing does no work.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import NamedTuple


class PromptSyntaxError(ValueError):
    """A prompt that cannot be turned into conditioning; the message names the offending part. (Not a UserError:
    this module imports nothing of ours; the prompt context turns it into a RequestError naming the field.)"""


# ---------------------------------------------------------------------------------------------------------
# Attention weights

# Alternatives are tried in order, as in A1111: escapes before the lone backslash, `:weight)` before `:`.
_ATTENTION_TOKEN = r"""
    \\[()\[\]\\]              # escaped bracket or backslash: the character itself
  | \\                        # any other backslash: dropped (A1111 appends an empty string)
  | [(\[]                     # opening bracket
  | :\s*([+-]?[.\d]+)\s*\)    # explicit weight closing the innermost round bracket
  | [)\]]                     # closing bracket
  | [^\\()\[\]:]+             # plain text
  | :                         # a colon that is not part of a weight
"""
_BREAK = r"\s*\bBREAK\b\s*"
_ROUND = 1.1
_SQUARE = 1 / 1.1
# Each run's weight is multiplied once per bracket around it, so the work grows with text x depth: bounded here.
# (1.1 ** 100 is 13,780; no prompt means anything that deep.)
MAX_BRACKET_DEPTH = 100


def parse_weighted(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) runs; ("BREAK", -1.0) marks a forced chunk break.

    Brackets that never close still apply their multiplier to everything after them, and unmatched closing
    brackets are kept as text, exactly like A1111 (see `bracket_problems` for warning the user instead).
    A BREAK inside brackets gets its weight multiplied too (A1111 then no longer treats it as a break).
    More than MAX_BRACKET_DEPTH brackets open at once (closed later or never) is a PromptSyntaxError.
    """
    runs: list[list] = []  # [text, weight] pairs, mutated in place so multiplication order matches A1111
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    for match in re.finditer(_ATTENTION_TOKEN, text, re.VERBOSE):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            runs.append([token[1:], 1.0])
        elif token in ("(", "["):
            if len(round_open) + len(square_open) == MAX_BRACKET_DEPTH:
                raise PromptSyntaxError(f"brackets nested more than {MAX_BRACKET_DEPTH} deep (unclosed ones count) "
                                        f"at character {match.start() + 1}")
            (round_open if token == "(" else square_open).append(len(runs))
        elif weight is not None and round_open:
            multiply(round_open.pop(), _parse_attention_weight(weight, token))
        elif token == ")" and round_open:
            multiply(round_open.pop(), _ROUND)
        elif token == "]" and square_open:
            multiply(square_open.pop(), _SQUARE)
        else:
            for index, part in enumerate(re.split(_BREAK, token)):
                if index:
                    runs.append(["BREAK", -1.0])
                runs.append([part, 1.0])

    for start in round_open:
        multiply(start, _ROUND)
    for start in square_open:
        multiply(start, _SQUARE)

    if not runs:
        return [("", 1.0)]
    merged = [runs[0]]
    for run in runs[1:]:
        if run[1] == merged[-1][1]:
            merged[-1][0] += run[0]
        else:
            merged.append(run)
    return [(run_text, float(run_weight)) for run_text, run_weight in merged]


def _parse_attention_weight(number: str, token: str) -> float:
    # `[.\d]+` also matches "." or "1.2.3"; A1111 crashes there with a bare ValueError.
    try:
        return float(number)
    except ValueError:
        raise PromptSyntaxError(f"invalid attention weight {number!r} in {token!r}") from None


def bracket_problems(text: str) -> list[str]:
    """Human-readable warnings, in text order, for each unclosed or unmatched bracket (1-based positions).

    Round and square brackets are separate stacks, as in `parse_weighted`, so "([)]" is balanced.
    """
    problems: list[tuple[int, str]] = []
    open_at: dict[str, list[int]] = {"(": [], "[": []}
    opener_of = {")": "(", "]": "["}
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2 if index + 1 < len(text) and text[index + 1] in "()[]\\" else 1
            continue
        if char in open_at:
            open_at[char].append(index)
        elif char in opener_of:
            stack = open_at[opener_of[char]]
            if stack:
                stack.pop()
            else:
                problems.append((index, f"unmatched '{char}' at character {index + 1}"))
        index += 1
    for char, positions in open_at.items():
        problems.extend((position, f"unclosed '{char}' at character {position + 1}") for position in positions)
    return [message for _, message in sorted(problems)]


# ---------------------------------------------------------------------------------------------------------
# Prompt editing and alternation
#
# A1111 parses with this lark (Earley) grammar and returns the prompt unchanged when it does not parse:
#     start: (prompt | /[][():]/+)*
#     prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*
#     emphasized: "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"
#     scheduled: "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
#     alternate: "[" prompt ("|" [prompt])+ "]"
#     plain: /([^\\\[\]():|]|\\.)+/
# Inside `prompt` no stray bracket is allowed, so a bracket group there parses in exactly one way: the
# group's first top-level separator (":", "|" or the closing bracket) picks the rule. The only choice is at
# the top level, where a group's brackets could also be read as stray text. Lark picks by its internal set
# order, which for A1111's pinned lark 1.1.2 changes with PYTHONHASHSEED (e.g. "[a:2]]]" is sometimes
# edited, sometimes literal). We always take the group: one of A1111's outcomes, and what the user meant.

_NUMBER = r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?"  # lark's SIGNED_NUMBER
_WHEN = r"\s*(" + _NUMBER + r")\s*\]"
_PLAIN_RUN = r"[^\\\[\]():|]+"  # plain text between escapes (A1111: /([^\\\[\]():|]|\\.)+/)


class _Scheduled(NamedTuple):
    before: _Parts | None
    after: _Parts
    number: str


class _Alternate(NamedTuple):
    options: tuple[_Parts, ...]


_Part = str | _Scheduled | _Alternate
_Parts = tuple[_Part, ...]


class _Unparsable(Exception):
    """The prompt is outside A1111's grammar; A1111 then uses the raw text for every step."""


class _Group:
    """A bracket group still open while scanning: its sections so far and the separators between them."""

    __slots__ = ("opener", "sections", "separators")

    def __init__(self, opener: str):
        self.opener = opener
        self.sections: list[list[_Part]] = [[]]
        self.separators: list[str] = []

    def separate(self, char: str, text: str, index: int) -> tuple[_Parts | None, int] | None:
        """Take the separator or closing bracket at index.

        Returns (None, next index) while the group goes on, (its parts, next index) once it is complete, and
        None when no rule of the grammar can continue it.
        """
        first, seps = self.sections[0], self.separators
        if self.opener == "(":
            if char == ")":
                return ("(", *first, *((":", *self.sections[1]) if seps else ()), ")"), index + 1
            return self._new_section(char, index) if char == ":" and not seps else None
        if char == "]" and not seps:
            return ("[", *first, "]"), index + 1
        if char == "]" and seps[0] == "|":
            return (_Alternate(tuple(tuple(option) for option in self.sections)),), index + 1
        if char == "|" and (not seps or seps[0] == "|"):
            return self._new_section(char, index)
        if char != ":" or seps not in ([], [":"]):
            return None
        when = re.compile(_WHEN).match(text, index + 1)
        if when:
            before = tuple(first) if seps else None
            return (_Scheduled(before, tuple(self.sections[-1]), when.group(1)),), when.end()
        return None if seps else self._new_section(char, index)

    def _new_section(self, char: str, index: int) -> tuple[None, int]:
        self.separators.append(char)
        self.sections.append([])
        return None, index + 1

    def as_stray_text(self) -> list[_Part]:
        """The group read as top-level text after it failed: stray opener and separators, inner parts kept."""
        if "|" in self.separators:  # only alternation may hold "|"
            raise _Unparsable
        parts: list[_Part] = [self.opener, *self.sections[0]]
        for separator, section in zip(self.separators, self.sections[1:]):
            parts += [separator, *section]
        return parts


def _parse_schedule(text: str) -> _Parts:
    """One left-to-right pass with an explicit stack, so deep or unclosed nesting cannot exhaust recursion.

    A group that cannot go on makes every enclosing group fail too (their prompts cannot hold it); the grammar's
    top level then reads their openers and separators as stray text, so the whole open stack is flattened.
    """
    top: list[_Part] = []
    stack: list[_Group] = []
    index = 0
    while index < len(text):
        char = text[index]
        current = stack[-1].sections[-1] if stack else top
        if char == "\\":
            if index + 1 == len(text) or text[index + 1] == "\n":  # plain's `\\.` has no DOTALL
                raise _Unparsable
            current.append(text[index:index + 2])
            index += 2
        elif char in "[(":
            stack.append(_Group(char))
            index += 1
        elif char not in "]):|":
            plain = re.compile(_PLAIN_RUN).match(text, index)
            current.append(plain.group(0))
            index = plain.end()
        elif not stack:
            if char == "|":
                raise _Unparsable
            top.append(char)
            index += 1
        else:
            step = stack[-1].separate(char, text, index)
            if step is None:  # read this character again, at the top level
                for group in stack:
                    top += group.as_stray_text()
                stack.clear()
                continue
            parts, index = step
            if parts is not None:
                stack.pop()
                (stack[-1].sections[-1] if stack else top).extend(parts)
    for group in stack:  # groups still open at the end fail the same way
        top += group.as_stray_text()
    return tuple(top)


def _when(number: str, steps: int, first_pass_steps: int | None) -> int:
    """Last step (1-based) that shows the `from` side; values below 1 mean `to` from the start.

    "0.5" is a fraction of the steps, "5" an absolute step. In a hires pass A1111 counts both across the two
    passes: "1.5" is half of the second pass and "15" its fifth step after a 10-step first pass.
    """
    value = float(number)
    if "." in number:
        value = (value - (0 if first_pass_steps is None else 1)) * steps
    elif first_pass_steps is not None:
        value -= first_pass_steps
    if not math.isfinite(value):  # "1e999": A1111 crashes in int(); clamp like any large number instead
        return steps if value > 0 else min(steps, -1)
    return min(steps, int(value))


def _walk(parts: _Parts):
    """Every edit and alternation node, nested ones included (iterative: nesting depth is unbounded)."""
    pending = list(parts)
    while pending:
        part = pending.pop()
        if isinstance(part, _Scheduled):
            yield part
            pending += (*(part.before or ()), *part.after)
        elif isinstance(part, _Alternate):
            yield part
            for option in part.options:
                pending += option


def _render(parts: _Parts, step: int, when_of: dict[int, int]) -> str:
    pieces: list[str] = []
    pending = [iter(parts)]
    while pending:
        for part in pending[-1]:
            if isinstance(part, str):
                pieces.append(part)
                continue
            if isinstance(part, _Scheduled):
                chosen = (part.before or ()) if step <= when_of[id(part)] else part.after
            else:
                chosen = part.options[(step - 1) % len(part.options)]
            pending.append(iter(chosen))  # descend; this level resumes once the chosen branch is done
            break
        else:
            pending.pop()
    return "".join(pieces)


def prompt_schedule(text: str, steps: int, hires_steps: int | None = None) -> list[tuple[int, str]]:
    """A1111's prompt schedule: (end_step, text) pairs, each text used up to and including its end step.

    Steps are 1-based. With `hires_steps`, `steps` is the first pass and the schedule is for the hires pass
    (end steps count hires steps). There is one entry per step at which some edit or alternation can change,
    plus the last step; like A1111, consecutive entries may repeat a text (alternation lists every step).
    """
    total = steps if hires_steps is None else hires_steps
    first_pass = None if hires_steps is None else steps
    try:
        parts = _parse_schedule(text)
    except _Unparsable:
        return [(total, text)]

    when_of: dict[int, int] = {}  # keyed by id: hashing a node would hash its whole subtree
    boundaries = {total}
    for node in _walk(parts):
        if isinstance(node, _Scheduled):
            when = when_of[id(node)] = _when(node.number, total, first_pass)
            if when >= 1:
                boundaries.add(when)
        else:
            boundaries.update(range(1, total + 1))
    return [(step, _render(parts, step, when_of)) for step in sorted(boundaries)]


# ---------------------------------------------------------------------------------------------------------
# Extra networks

_EXTRA_NETWORK = r"<(\w+):([^>]+)>"


@dataclass(frozen=True)
class ExtraNetworkTag:
    """One `<kind:name:...>` tag; unet_weight None means "same as weight" (A1111's default)."""

    kind: str
    name: str
    weight: float
    unet_weight: float | None


def extract_extra_networks(text: str) -> tuple[str, list[ExtraNetworkTag]]:
    """Remove `<kind:name>`, `<kind:name:w>`, `<kind:name:te:unet>` (or `te=`/`unet=`) tags from the prompt.

    Tags of every kind are returned in prompt order; the caller decides which kinds it supports. The rest of
    the text is kept byte for byte. Other named arguments (A1111's `dyn=` and the like) are ignored.
    """
    tags: list[ExtraNetworkTag] = []

    def take(match: re.Match) -> str:
        tags.append(_extra_network_tag(match.group(0), match.group(1), match.group(2)))
        return ""

    return re.sub(_EXTRA_NETWORK, take, text), tags


def _extra_network_tag(tag: str, kind: str, arguments: str) -> ExtraNetworkTag:
    positional: list[str] = []
    named: dict[str, str] = {}
    for item in arguments.split(":"):
        pieces = item.split("=", 2)  # like A1111: "a=b=c" is positional
        if len(pieces) == 2:
            named[pieces[0]] = pieces[1]
        else:
            positional.append(item)
    if not positional:
        raise PromptSyntaxError(f"extra network tag {tag} has no name")

    def number(value: str) -> float:
        try:
            result = float(value)
        except ValueError:
            result = math.nan
        if not math.isfinite(result):
            raise PromptSyntaxError(f"extra network tag {tag}: weight {value!r} is not a number")
        return result

    weight = number(named.get("te", positional[1] if len(positional) > 1 else "1"))
    unet = named.get("unet", positional[2] if len(positional) > 2 else None)
    return ExtraNetworkTag(kind, positional[0], weight, None if unet is None else number(unet))
