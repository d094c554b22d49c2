"""Time of the text parsers against the size of their input: 1x and 10x (and 100x where it fits the limits).

The parsers read text that strangers send (prompts, the token counter, infotext from files and from the page), and
the job worker parses prompts before a job runs, so each must take time linear in its input or refuse it early.
For each case it prints the input sizes, the CPU time of this thread (best of `--repeat` runs, garbage collector
off) and the ratio to the 1x time; PASS when 10x the input costs less than 15x the time (linear, with room for
the machine's noise), FAIL otherwise. Cases:

- attack: "[x|y]" followed by unclosed "[a" (A1111's parser: time grows with text x depth; now refused at
  MAX_BRACKET_DEPTH, so it stays constant);
- nested: a prompt 99 brackets deep with many weighted runs inside (the deepest a prompt may be);
- realistic: "(masterpiece:1.2), [best], ((detailed)), " repeated;
- alternation: what a job does before encoding at 20 steps: the schedule expanded, each distinct text parsed;
- token counter: the "used/75" counter beside a prompt box (needs the CLIP tokenizer: open_clip ships it);
- infotext: a long run of words without a colon, a line of unterminated quotes, and a long prompt.

Run from the repository root:

    .venv/bin/python bench/parsers.py            # best of 5
    .venv/bin/python bench/parsers.py --repeat 9
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.core.infotext import MAX_INFOTEXT_CHARACTERS, parse_infotext  # noqa: E402
from backend.core.requests import MAX_PROMPT_CHARACTERS  # noqa: E402
from backend.prompts.parser import MAX_BRACKET_DEPTH, PromptSyntaxError, parse_weighted, prompt_schedule  # noqa: E402

TARGET = 15.0  # at most this many times the time for 10x the input


def refused_or_parsed(text: str):
    try:
        return parse_weighted(text)
    except PromptSyntaxError:
        return None


def job_validation(text: str):
    return {variant: parse_weighted(variant) for _, variant in prompt_schedule(text, 20)}


def token_counter():
    from backend.models.tokenizer import build_clip_tokenizer
    from backend.prompts.encoding import PromptChunker

    chunker = PromptChunker(build_clip_tokenizer())

    def count(text: str):
        return max(chunker.lengths(variant) for variant in {v for _, v in prompt_schedule(text, 20)})
    return count


def cases():
    return {
        "attack [x|y][a[a...": (refused_or_parsed, lambda n: "[x|y]" + "[a" * (700 * n), MAX_PROMPT_CHARACTERS),
        "nested 99 deep": (parse_weighted, lambda n: "(" * (MAX_BRACKET_DEPTH - 1) + "a[b]" * (45 * n),
                           MAX_PROMPT_CHARACTERS),
        "realistic prompt": (parse_weighted, lambda n: "(masterpiece:1.2), [best], ((detailed)), " * (4 * n),
                             MAX_PROMPT_CHARACTERS),
        "alternation, 20 steps": (job_validation, lambda n: "[x|y|z] " + "[a" * 90 + " (b:1.1) c," * (15 * n),
                                  MAX_PROMPT_CHARACTERS),
        "token counter": (token_counter(), lambda n: "[x|y] " + "word, (w:1.1), " * (12 * n), MAX_PROMPT_CHARACTERS),
        "infotext, no colon": (parse_infotext, lambda n: "word " * (100 * n), MAX_INFOTEXT_CHARACTERS),
        "infotext, open quotes": (parse_infotext, lambda n: 'k: "a, ' * (100 * n), MAX_INFOTEXT_CHARACTERS),
        "infotext, long prompt": (parse_infotext, lambda n: "cat, " * (150 * n) + "\nSteps: 2, Seed: 3, Size: 8x8",
                                  MAX_INFOTEXT_CHARACTERS),
    }


def cpu_seconds(function, argument, repeat: int) -> float:
    best = float("inf")
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeat):
            started = time.thread_time()
            function(argument)
            best = min(best, time.thread_time() - started)
    finally:
        gc.enable()
    return max(best, 1e-7)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per size; the best counts (default 5)")
    args = parser.parse_args(argv)
    failed = []
    print(f"{'case':24} {'size 1x':>9} {'1x ms':>9} {'10x ms':>9} {'ratio':>6} {'100x ms':>9} {'ratio':>6}")
    for name, (function, make, limit) in cases().items():
        base = cpu_seconds(function, make(1), args.repeat)
        ten = cpu_seconds(function, make(10), args.repeat)
        hundred = cpu_seconds(function, make(100), args.repeat) if len(make(100)) <= limit else None
        tail = f"{hundred * 1000:9.2f} {hundred / base:5.1f}x" if hundred else f"{'(over the limit)':>16}"
        print(f"{name:24} {len(make(1)):9,} {base * 1000:9.3f} {ten * 1000:9.3f} {ten / base:5.1f}x {tail}")
        if ten / base >= TARGET:
            failed.append(name)
    print(f"{'FAIL' if failed else 'PASS'}: 10x the input costs under {TARGET:.0f}x the time"
          + (f" except {', '.join(failed)}" if failed else " in every case"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
