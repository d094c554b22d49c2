"""A1111 prompt language: attention weights, bracket warnings, prompt editing/alternation, extra-network tags.

Expected values are A1111's documented examples; the others were checked against A1111's own lark-based code.
"""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from backend.prompts.parser import (
    ExtraNetworkTag,
    PromptSyntaxError,
    bracket_problems,
    extract_extra_networks,
    parse_weighted,
    prompt_schedule,
)


def assert_runs(got: list[tuple[str, float]], expected: list[tuple[str, float]]) -> None:
    assert [text for text, _ in got] == [text for text, _ in expected]
    assert [weight for _, weight in got] == pytest.approx([weight for _, weight in expected])
    assert all(isinstance(weight, float) for _, weight in got)


# ---------------------------------------------------------------------------------------------------------
# parse_weighted


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ],
        ),
        ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ],
)
def test_parse_weighted_a1111_documented_examples(text, expected):
    assert_runs(parse_weighted(text), expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("((word))", [("word", 1.21)]),
        ("[word]", [("word", 1 / 1.1)]),
        ("[[word]]", [("word", 1 / 1.1 / 1.1)]),
        ("(word:1.0)", [("word", 1.0)]),
        ("[(a:2)]", [("a", 2 / 1.1)]),
        ("((a:2))", [("a", 2.2)]),
        ("(a: 1.5 )", [("a", 1.5)]),
        ("(a:-0.5)", [("a", -0.5)]),
        ("(a:+2)", [("a", 2.0)]),
        ("(a:1.)", [("a", 1.0)]),
        ("(a:.5)", [("a", 0.5)]),
        ("x (a:1.2) y", [("x ", 1.0), ("a", 1.2), (" y", 1.0)]),
        # `:weight)` only counts when a round bracket is open; otherwise it is text
        ("a:1.5) b", [("a:1.5) b", 1.0)]),
        ("(a:1e3)", [("a:1e3", 1.1)]),  # exponents are not weights: the colon stays text
        ("a:b", [("a:b", 1.0)]),
        ("a) b]", [("a) b]", 1.0)]),
        ("[unclosed", [("unclosed", 1 / 1.1)]),
        ("([a", [("a", 1.1 / 1.1)]),
        ("\n(a)\n", [("\n", 1.0), ("a", 1.1), ("\n", 1.0)]),
    ],
)
def test_parse_weighted_brackets_and_weights(text, expected):
    assert_runs(parse_weighted(text), expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\(a\\) \\[b\\] \\\\", [("(a) [b] \\", 1.0)]),
        ("(\\(a\\):1.2)", [("(a)", 1.2)]),
        ("\\\\(a)", [("\\", 1.0), ("a", 1.1)]),  # escaped backslash, then a real bracket
        ("[\\]]", [("]", 1 / 1.1)]),
        # A1111 drops a backslash that escapes nothing (its lone-backslash token appends an empty string)
        ("a\\b", [("ab", 1.0)]),
        ("a\\", [("a", 1.0)]),
    ],
)
def test_parse_weighted_escapes(text, expected):
    assert_runs(parse_weighted(text), expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\(a\\) BREAK b", [("(a)", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
        ("a\nBREAK\nb", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
        ("a BREAK BREAK b", [("a", 1.0), ("BREAK", -1.0), ("", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
        ("BREAK", [("", 1.0), ("BREAK", -1.0), ("", 1.0)]),
        ("BREAKfast aBREAK break", [("BREAKfast aBREAK break", 1.0)]),
        # the spaces around BREAK leave empty runs, which only merge with equal weights
        ("(x) BREAK (y)", [("x", 1.1), ("", 1.0), ("BREAK", -1.0), ("", 1.0), ("y", 1.1)]),
        # A1111 quirk: a BREAK inside brackets is weighted like its neighbours
        ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]),
    ],
)
def test_parse_weighted_break(text, expected):
    assert_runs(parse_weighted(text), expected)


@pytest.mark.parametrize("text", ["", "()", "[]", "(())", "(:1.5)"])
def test_parse_weighted_empty(text):
    assert parse_weighted(text) == [("", 1.0)]


@pytest.mark.parametrize("text", ["(a:.)", "(a:1.2.3)", "(a: .. )"])
def test_parse_weighted_rejects_malformed_weight(text):
    with pytest.raises(PromptSyntaxError, match="invalid attention weight"):
        parse_weighted(text)
    assert issubclass(PromptSyntaxError, ValueError)  # A1111 raises a plain ValueError here


def test_parse_weighted_merges_only_equal_neighbours():
    assert parse_weighted("a(b)(c)d") == [("a", 1.0), ("bc", pytest.approx(1.1)), ("d", 1.0)]


# ---------------------------------------------------------------------------------------------------------
# bracket_problems


@pytest.mark.parametrize(
    "text",
    ["", "plain", "(a) [b] ((c:1.2))", "[a:b:3] [x|y]", "\\(a\\]", "([)]", "(a:1.2)", "\\\\\\("],
)
def test_bracket_problems_balanced(text):
    assert bracket_problems(text) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a (b", ["unclosed '(' at character 3"]),
        ("a [b", ["unclosed '[' at character 3"]),
        ("a) b", ["unmatched ')' at character 2"]),
        ("(a) [b] c]", ["unmatched ']' at character 10"]),
        (")(", ["unmatched ')' at character 1", "unclosed '(' at character 2"]),
        ("((a)", ["unclosed '(' at character 1"]),
        ("a:1.2)", ["unmatched ')' at character 6"]),
        ("\\\\(a", ["unclosed '(' at character 3"]),  # the backslash escapes a backslash, not the bracket
        ("[(a]", ["unclosed '(' at character 2"]),
        ("(a] [", ["unclosed '(' at character 1", "unmatched ']' at character 3", "unclosed '[' at character 5"]),
    ],
)
def test_bracket_problems_reports_each_problem(text, expected):
    assert bracket_problems(text) == expected


# ---------------------------------------------------------------------------------------------------------
# prompt_schedule


def g(prompt: str) -> list[tuple[int, str]]:
    return prompt_schedule(prompt, 10)


def h(prompt: str) -> list[tuple[int, str]]:
    return prompt_schedule(prompt, 10, hires_steps=10)


ALTERNATING = [(step, "female" if step % 2 else "male") for step in range(1, 11)]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("test", [(10, "test")]),
        ("a [b:3]", [(3, "a "), (10, "a b")]),
        ("a [b: 3]", [(3, "a "), (10, "a b")]),
        ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
        ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
        ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
        ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
        ("a [unbalanced", [(10, "a [unbalanced")]),
        ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
        ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
        (
            "[a|(b:1.1)]",
            [(1, "a"), (2, "(b:1.1)"), (3, "a"), (4, "(b:1.1)"), (5, "a"), (6, "(b:1.1)"), (7, "a"),
             (8, "(b:1.1)"), (9, "a"), (10, "(b:1.1)")],
        ),
        ("[fe|]male", ALTERNATING),
        (
            "[fe|||]male",
            [(1, "female"), (2, "male"), (3, "male"), (4, "male"), (5, "female"), (6, "male"), (7, "male"),
             (8, "male"), (9, "female"), (10, "male")],
        ),
    ],
)
def test_schedule_a1111_documented_examples(prompt, expected):
    assert g(prompt) == expected


def test_schedule_pipe_inside_edit_is_unparsable_like_real_a1111():
    # A1111's doctest (marked "not handling this right now") expects [(5, 'a  c'), (10, 'a {b|d{ c')], but that
    # predates alternation: "|" is no longer plain text, so A1111's own parser rejects the prompt and uses it as is.
    assert g("a [{b|d{:.5] c") == [(10, "a [{b|d{:.5] c")]


def test_schedule_a1111_hires_examples():
    assert h("a [b:.5] c") == [(10, "a b c")]
    assert h("a [b:1.5] c") == [(5, "a  c"), (10, "a b c")]
    assert h("a [b:15] c") == [(5, "a  c"), (10, "a b c")]  # integer steps count across both passes


def test_schedule_hires_counts_second_pass_steps():
    assert prompt_schedule("[a:b:1.25]", 20, hires_steps=8) == [(2, "a"), (8, "b")]
    assert prompt_schedule("[a:b:23]", 20, hires_steps=8) == [(3, "a"), (8, "b")]
    assert prompt_schedule("[a:b:5]", 20, hires_steps=8) == [(8, "b")]  # switched during the first pass
    expected = [(step, ("a" if step % 2 else "b") + " c") for step in range(1, 9)]
    assert prompt_schedule("[a|b] [c:2]", 4, hires_steps=8) == expected


def test_schedule_a1111_readme_example():
    prompt = (
        "fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
        "[ in foreground::0.6][: in background:0.25] [shoddy:masterful:0.5]"
    )
    assert prompt_schedule(prompt, 100) == [
        (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
        (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
        (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
        (75, "fantasy landscape with a lake and an oak in background masterful"),
        (100, "fantasy landscape with a lake and a christmas tree in background masterful"),
    ]


@pytest.mark.parametrize(
    ("prompt", "steps", "expected"),
    [
        ("[cat:dog:0.25]", 20, [(5, "cat"), (20, "dog")]),
        ("[a:b:50]", 10, [(10, "a")]),  # clamped to the last step
        ("[a:b:2.5]", 10, [(10, "a")]),
        ("[a:b:1]", 10, [(1, "a"), (10, "b")]),
        ("[a:b:1.]", 10, [(10, "a")]),  # "1." is a fraction: all of the steps
        ("[a:b:+2]", 10, [(2, "a"), (10, "b")]),
        ("[a:b:-0.5]", 10, [(10, "b")]),
        ("[a:b:-1]", 10, [(10, "b")]),
        ("[a:b:0]", 10, [(10, "b")]),
        ("[a:b:0.05]", 10, [(10, "b")]),  # 0.5 of a step rounds down to 0
        ("[a:b:1e1]", 20, [(10, "a"), (20, "b")]),  # no "." so an absolute step
        ("[a:b:1e999]", 10, [(10, "a")]),  # A1111 crashes (int of infinity); clamped like any large number
        ("[a:b: 3 ]", 10, [(3, "a"), (10, "b")]),
        ("[a::3]", 10, [(3, "a"), (10, "")]),
        ("[:b:3]", 10, [(3, ""), (10, "b")]),
        ("[a:b:3] [c:d:3]", 10, [(3, "a c"), (10, "b d")]),
        ("a\nb [c:\n2\n]", 10, [(2, "a\nb "), (10, "a\nb c")]),
    ],
)
def test_schedule_edit_numbers(prompt, steps, expected):
    assert prompt_schedule(prompt, steps) == expected


@pytest.mark.parametrize(
    ("prompt", "steps", "expected"),
    [
        ("(a:[b:c:2])", 10, [(2, "(a:b)"), (10, "(a:c)")]),
        ("[[a|b]:c:2]", 4, [(1, "a"), (2, "b"), (3, "c"), (4, "c")]),
        ("[a:[b|c]:2]", 4, [(1, "a"), (2, "a"), (3, "b"), (4, "c")]),
        ("[|]", 3, [(1, ""), (2, ""), (3, "")]),
        ("[a|b|c]", 4, [(1, "a"), (2, "b"), (3, "c"), (4, "a")]),
    ],
)
def test_schedule_nesting_and_alternation(prompt, steps, expected):
    assert prompt_schedule(prompt, steps) == expected


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        # escapes stay verbatim: parse_weighted resolves them later
        ("[\\[a\\]:b:3]", [(3, "\\[a\\]"), (10, "b")]),
        ("[a\\:b:3]", [(3, ""), (10, "a\\:b")]),
        ("\\[a:3]", [(10, "\\[a:3]")]),
        ("[a\\|b] [c:3]", [(3, "[a\\|b] "), (10, "[a\\|b] c")]),
        ("[\\\\:x:3]", [(3, "\\\\"), (10, "x")]),
    ],
)
def test_schedule_escapes(prompt, expected):
    assert g(prompt) == expected


@pytest.mark.parametrize(
    "prompt",
    [
        "a | b [c:3]",  # "|" outside alternation
        "[a:3] \\",  # trailing backslash escapes nothing
        "[a:3]\\\nb",  # nor does one before a newline
        "[a|b:3]",
    ],
)
def test_schedule_unparsable_prompt_is_used_as_is(prompt):
    assert g(prompt) == [(10, prompt)]
    assert h(prompt) == [(10, prompt)]


def test_schedule_empty_prompt():
    assert g("") == [(10, "")]


def test_schedule_group_next_to_stray_bracket_is_edited():
    # Ambiguous in A1111's grammar (its result depends on lark's set order and hash seed); the edit wins here.
    assert g("[a:2]]]") == [(2, "]]"), (10, "a]]")]
    assert g("[[a:2]]]") == [(2, "[]]"), (10, "[a]]")]


def test_schedule_handles_deep_and_unclosed_nesting_without_recursion():
    deep = "[" * 3000 + "a:2" + "]" * 3000
    assert g(deep) == [(2, "[" * 2999 + "]" * 2999), (10, "[" * 2999 + "a" + "]" * 2999)]
    assert g("[" * 3000 + "a" + ":1]" * 3000) == [(1, ""), (10, "a")]
    long = "[a:1] " * 5000 + "[" * 5000
    result = g(long)
    assert [step for step, _ in result] == [1, 10]
    assert result[1][1] == "a " * 5000 + "[" * 5000


# ---------------------------------------------------------------------------------------------------------
# extract_extra_networks


def test_extra_networks_removed_and_returned_in_order():
    text, tags = extract_extra_networks("a <lora:foo:0.8> b<hypernet:bar>  <lyco:x y.v2:-0.5:0.25>!")
    assert text == "a  b  !"
    assert tags == [
        ExtraNetworkTag("lora", "foo", 0.8, None),
        ExtraNetworkTag("hypernet", "bar", 1.0, None),
        ExtraNetworkTag("lyco", "x y.v2", -0.5, 0.25),
    ]


@pytest.mark.parametrize(
    ("tag", "weight", "unet"),
    [
        ("<lora:n>", 1.0, None),
        ("<lora:n:0.5>", 0.5, None),
        ("<lora:n: 0.5 >", 0.5, None),
        ("<lora:n:0.5:0.7>", 0.5, 0.7),
        ("<lora:n:te=0.5:unet=0.2>", 0.5, 0.2),
        ("<lora:n:unet=0.2>", 1.0, 0.2),
        ("<lora:n:0.3:te=0.9>", 0.9, None),
        ("<lora:n:0.3:0.4:unet=0.1>", 0.3, 0.1),
        ("<lora:n:0.5:dyn=8>", 0.5, None),
        ("<lora:n:-2>", -2.0, None),
    ],
)
def test_extra_network_weights(tag, weight, unet):
    text, tags = extract_extra_networks(tag)
    assert text == ""
    assert tags == [ExtraNetworkTag("lora", "n", weight, unet)]


@pytest.mark.parametrize("text", ["plain prompt", "<notatag>", "<a b:c>", "a < b > c", "<:x>", ""])
def test_extra_networks_leave_other_text_alone(text):
    assert extract_extra_networks(text) == (text, [])


@pytest.mark.parametrize(
    "tag", ["<lora:foo:abc>", "<lora:foo:>", "<lora:foo:1:x>", "<lora:foo:inf>", "<lora:foo:te=nan>"]
)
def test_extra_network_bad_weight_raises_naming_the_tag(tag):
    with pytest.raises(PromptSyntaxError, match="not a number") as info:
        extract_extra_networks(f"a {tag} b")
    assert tag in str(info.value)


def test_extra_network_without_name_raises():
    with pytest.raises(PromptSyntaxError, match="no name"):
        extract_extra_networks("<lora:te=1>")


def test_extra_network_tag_is_frozen():
    tag = ExtraNetworkTag("lora", "n", 1.0, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        tag.weight = 2.0  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------------------
# module hygiene


def test_module_imports_only_the_standard_library_it_needs():
    source = (Path(__file__).resolve().parent.parent / "backend" / "prompts" / "parser.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    assert imported <= {"__future__", "math", "re", "dataclasses", "typing"}
