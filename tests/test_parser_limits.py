"""Parsers fed hostile text (issue 26, item 4): the attention parser, the schedule expansion, the token counter and
the infotext parser take time linear in their input (or refuse it), and still give A1111's exact results."""
from __future__ import annotations

import gc
import math
import random
import re
import time

import pytest

from backend.core.infotext import MAX_INFOTEXT_CHARACTERS, PARAM_PATTERN, parameter_pairs, parse_infotext
from backend.core.requests import MAX_PROMPT_CHARACTERS, RequestError, Txt2ImgRequest
from backend.prompts import context as networks
from backend.prompts import encoding as prompt_encoding
from backend.prompts.parser import MAX_BRACKET_DEPTH, PromptSyntaxError, parse_weighted, prompt_schedule

# --- exactness: the bounded parser against A1111's algorithm ------------------------------------------------------

_TOKEN = re.compile(r"\\[()\[\]\\]|\\|[(\[]|:\s*([+-]?[.\d]+)\s*\)|[)\]]|[^\\()\[\]:]+|:")


def a1111_parse_weighted(text: str) -> list[tuple[str, float]]:
    """A1111's parse_prompt_attention as this project had it before the depth bound (every closing bracket
    multiplies every run after its opening one; weights merged when exactly equal)."""
    runs, round_open, square_open = [], [], []

    def multiply(start, factor):
        for run in runs[start:]:
            run[1] *= factor

    for match in _TOKEN.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            runs.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(runs))
        elif token == "[":
            square_open.append(len(runs))
        elif weight is not None and round_open:
            try:
                factor = float(weight)
            except ValueError:
                raise PromptSyntaxError(weight) from None
            multiply(round_open.pop(), factor)
        elif token == ")" and round_open:
            multiply(round_open.pop(), 1.1)
        elif token == "]" and square_open:
            multiply(square_open.pop(), 1 / 1.1)
        else:
            for index, part in enumerate(re.split(r"\s*\bBREAK\b\s*", token)):
                if index:
                    runs.append(["BREAK", -1.0])
                runs.append([part, 1.0])
    for start in round_open:
        multiply(start, 1.1)
    for start in square_open:
        multiply(start, 1 / 1.1)
    if not runs:
        return [("", 1.0)]
    merged = [runs[0]]
    for run in runs[1:]:
        if run[1] == merged[-1][1]:
            merged[-1][0] += run[0]
        else:
            merged.append(run)
    return [(text, float(weight)) for text, weight in merged]


PIECES = ["(", ")", "[", "]", "((", "]]", "a", "b c", "cat, ", ":", ":1.2)", ":0.5)", ": 1.3 )", ":.)", "\\(", "\\]",
          "\\", " BREAK ", "BREAK", ",", "<lora:x:1>", "(word:1.1)", "[[dim]]", "é"]


def corpus(count: int, seed: int = 26) -> list[str]:
    rng = random.Random(seed)
    texts = ["a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", "(unbalanced", "\\(literal\\]", "a BREAK b",
             "(" * MAX_BRACKET_DEPTH + "deep", "[" * 50 + "(" * 50 + "a]]]))" + "b" * 3]
    texts += ["".join(rng.choice(PIECES) for _ in range(rng.randint(0, 40))) for _ in range(count)]
    return texts


def outcome(parse, text):
    try:
        return parse(text)
    except PromptSyntaxError:
        return "refused"


def test_weights_are_exactly_a1111s_on_a_corpus():
    texts = corpus(4000)
    assert sum(outcome(parse_weighted, text) == "refused" for text in texts) > 10  # malformed weights are in it
    for text in texts:
        assert outcome(parse_weighted, text) == outcome(a1111_parse_weighted, text), text  # ==, not approx


def test_nesting_deeper_than_the_limit_is_refused_naming_the_field():
    assert parse_weighted("[" * MAX_BRACKET_DEPTH + "a") == a1111_parse_weighted("[" * MAX_BRACKET_DEPTH + "a")
    with pytest.raises(PromptSyntaxError, match=f"more than {MAX_BRACKET_DEPTH} deep"):
        parse_weighted("[a" * 7000)
    with pytest.raises(PromptSyntaxError, match="deep"):
        parse_weighted("(" * 60 + "[" * 41 + "a")  # both kinds count


def test_the_attack_prompt_fails_fast_with_a_422(make_services):
    """Before: "[x|y]" + "[a" * 7000 at 20 steps held the job worker for 55 s."""
    services = make_services()
    job = services.jobs.run_and_wait(Txt2ImgRequest(prompt="[x|y]" + "[a" * 7000, steps=20, width=64, height=64),
                                     timeout=120)
    assert job.status == "failed" and job.error_field == "prompt" and "deep" in job.error


def test_each_distinct_text_is_parsed_and_encoded_once_per_job(make_services, monkeypatch):
    """Alternation gives one prompt per step; the job parses and encodes each distinct one once."""
    parsed, encoded = [], []
    counting_parse = lambda text: parsed.append(text) or parse_weighted(text)  # noqa: E731
    monkeypatch.setattr(networks, "parse_weighted", counting_parse)
    monkeypatch.setattr(prompt_encoding, "parse_weighted", counting_parse)
    original_encode = prompt_encoding.PromptEncoder.encode
    monkeypatch.setattr(prompt_encoding.PromptEncoder, "encode",
                        lambda self, text: encoded.append(text) or original_encode(self, text))
    services = make_services()
    job = services.jobs.run_and_wait(Txt2ImgRequest(prompt="a [red|blue|green] circle", negative_prompt="[x|y]",
                                                    steps=12, width=64, height=64), timeout=300)
    assert job.status == "done", job.error
    texts = {"a red circle", "a blue circle", "a green circle", "x", "y"}
    assert sorted(parsed) == sorted(texts) and sorted(encoded) == sorted(texts)


def test_the_token_counter_is_bounded(services):
    counter = services.networks.token_counter
    assert counter("a cat", 20) == (2, 75)
    assert counter("[a|b|c] " + "x " * 10, 10**9)[0] == 11  # steps clamped: no billion-step schedule
    long = "cat " * 50_000  # 200,000 characters, ten times the prompt limit
    assert counter(long, 20)[0] == counter(long[:MAX_PROMPT_CHARACTERS], 20)[0]
    used, shown = counter("[a" * 20_000, 20)  # too deep to parse: counted as typed
    assert used >= 10_000 and shown % 75 == 0


def test_prompt_boxes_cap_their_length(services):
    from ui.layout import build_ui

    page = build_ui(services)
    limits = {block.elem_id: getattr(block, "max_length", None) for block in page.blocks.values()
              if getattr(block, "elem_id", None) in ("txt2img_prompt", "txt2img_neg_prompt", "img2img_prompt",
                                                     "img2img_neg_prompt")}
    assert limits == dict.fromkeys(limits, MAX_PROMPT_CHARACTERS) and len(limits) == 4


def test_infotext_pairs_are_exactly_a1111s():
    rng = random.Random(26)
    alphabet = list('ab :,"\\-/\t_1é\x1c\r\xa0S')
    lines = ['Steps: 20, Sampler: "DPM++ 2M", Lora hashes: "a: 1, b: 2", Size: 512x512',
             'k: "unterminated, j: "x\\"y", z: ""', "Key : v , Two words: 3,Sched: x"]
    lines += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(20_000)]
    for line in lines:
        assert parameter_pairs(line) == PARAM_PATTERN.findall(line), repr(line)


def test_infotext_longer_than_the_limit_is_cut():
    prompt = "p" * (MAX_INFOTEXT_CHARACTERS + 10)
    parsed = parse_infotext(prompt + "\nSteps: 20, Seed: 1, Size: 64x64")
    assert parsed["Prompt"] == "p" * MAX_INFOTEXT_CHARACTERS and "Steps" not in parsed


# --- growth: 10x the input may cost at most 15x the time --------------------------------------------------------

def cpu_seconds(function, argument) -> float:
    """Per call, best of five samples in this thread's CPU time (other processes and threads do not count),
    without the garbage collector (its passes cost in proportion to everything the test process holds, not to
    the input). Each sample repeats the call for at least 50 ms, so that a sub-millisecond input is not measured
    against the clock's and the cache's noise."""
    gc.collect()
    gc.disable()
    try:
        started = time.thread_time()
        function(argument)
        once = max(time.thread_time() - started, 1e-6)
        repeats = max(1, math.ceil(0.05 / once))
        best = float("inf")
        for _ in range(5):
            started = time.thread_time()
            for _ in range(repeats):
                function(argument)
            best = min(best, (time.thread_time() - started) / repeats)
    finally:
        gc.enable()
    return best


def job_validation(text: str):
    """What a job does with a prompt before encoding: expand the schedule, parse each distinct text."""
    return {variant: parse_weighted(variant) for _, variant in prompt_schedule(text, 20)}


def refused_or_parsed(text: str):
    try:
        return parse_weighted(text)
    except PromptSyntaxError:
        return None


GROWTH_CASES = {
    "unclosed brackets (the attack)": (refused_or_parsed, lambda n: "[x|y]" + "[a" * (700 * n)),
    "nested prompt": (parse_weighted, lambda n: "(" * (MAX_BRACKET_DEPTH - 1) + "a[b]" * (250 * n)),
    "realistic prompt": (parse_weighted, lambda n: "(masterpiece:1.2), [best], ((detailed)), " * (50 * n)),
    "alternation at 20 steps": (job_validation, lambda n: "[x|y|z] " + "[a" * 90 + " (b:1.1) c," * (100 * n)),
    "infotext without colons": (parse_infotext, lambda n: "word " * (1000 * n)),
    "infotext of unterminated quotes": (parse_infotext, lambda n: 'k: "a, ' * (1000 * n)),
    "infotext of a long prompt": (parse_infotext, lambda n: "cat, " * (900 * n) + "\nSteps: 2, Seed: 3, Size: 8x8"),
}


GROWTH_BAR = 40  # for 10x the input; see test_time_grows_linearly_with_the_input


@pytest.mark.parametrize("name", GROWTH_CASES)
def test_time_grows_linearly_with_the_input(name):
    """10x the input: quadratic work takes 100x the time. Linear work measures 5-10x on an idle machine, but up
    to 20x on a loaded CI machine, where the small input stays in the caches and the large one competes for
    them; so the bar is 40x, well clear of both."""
    function, make = GROWTH_CASES[name]
    small, large = make(1), make(10)
    assert len(large) <= MAX_INFOTEXT_CHARACTERS
    ratio = cpu_seconds(function, large) / max(cpu_seconds(function, small), 1e-6)
    assert ratio < GROWTH_BAR, f"{name}: 10x the input took {ratio:.1f}x the time"


def test_token_counter_time_grows_linearly(services):
    counter = services.networks.token_counter
    counter("warm up the tokenizer", 20)
    small, large = ("[x|y] " + "word, (w:1.1), " * (130 * n) for n in (1, 10))
    ratio = cpu_seconds(lambda text: counter(text, 20), large) / cpu_seconds(lambda text: counter(text, 20), small)
    assert len(large) <= MAX_PROMPT_CHARACTERS and ratio < GROWTH_BAR, ratio


def test_request_refuses_prompts_over_the_limit():
    with pytest.raises(RequestError, match="prompt"):
        from backend.core.requests import build_request

        build_request(Txt2ImgRequest, {"prompt": "x" * (MAX_PROMPT_CHARACTERS + 1)})
