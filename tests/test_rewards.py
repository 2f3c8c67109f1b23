"""Tests for tgrl.rewards: extraction, the one answer comparison, TRL reward functions, and bounds.

Why so many cases: every training reward, filter F1 and evaluation score goes through
``answers_match``; a wrong rule here silently moves every number we report.
"""

from __future__ import annotations

import builtins
import doctest
import logging
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import tgrl.rewards as rewards
from tgrl.rewards import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    REWARD_FUNCS,
    THINK_CLOSE,
    THINK_OPEN,
    UNPARSEABLE_GOLD_COUNTS,
    accuracy_reward,
    answers_match,
    check_gold,
    completion_text,
    extract_answer,
    format_reward,
    get_reward_funcs,
    score_completion,
)

# Generous on purpose: the deadline is 0.5 s per call and these cases take minutes without it; a busy
# 2-core machine can stretch a bounded call by seconds.
TIME_LIMIT_SECONDS = 5.0
ABCD = ["3", "5", "7", "9"]
COLOURS = ["red", "blue", "green", "yellow"]

# (pred, gold, choices, answer_type, expected)
MATCH_CASES = [
    # multiple-choice letters, many spellings
    ("B", "B", ABCD, None, True),
    ("(B)", "B", ABCD, None, True),
    ("B.", "B", ABCD, None, True),
    ("B)", "B", ABCD, None, True),
    ("Option B", "B", ABCD, None, True),
    ("option (b)", "B", ABCD, None, True),
    ("The answer is B", "B", ABCD, None, True),
    ("The correct option is (B).", "B", ABCD, None, True),
    ("**B**", "B", ABCD, None, True),
    ("b", "B", ABCD, None, True),
    ("B. 5", "B", ABCD, None, True),
    ("(B) blue", "B", COLOURS, None, True),
    ("blue", "B", COLOURS, None, True),
    ("Blue.", "B", COLOURS, None, True),
    ("5", "B", ABCD, None, True),
    ("C", "B", ABCD, None, False),
    ("red", "B", COLOURS, None, False),
    ("E", "B", ABCD, None, False),  # out of range for 4 options: not a letter answer
    ("E", "E", ABCD, None, True),  # a gold outside the options is compared as plain text
    ("B", "blue", COLOURS, None, True),  # gold given as the option text
    ("(b)", "(B)", None, None, True),  # bare letter gold without choices
    ("Option C", "C", None, None, True),
    ("A", "B", None, None, False),
    ("5 cm", "B", ["3 cm", "5 cm"], None, True),
    ("5", "B", ["(A) 3", "(B) 5"], None, True),  # options that repeat their own letter
    ("\\frac{\\sqrt{3}}{2}", "C", ["1", "\\sqrt{2}/2", "\\sqrt{3}/2"], None, True),
    ("D", "D", ABCD, "choice", True),
    ("Yes", "B", ["Yes", "No"], None, False),
    # yes / no
    ("Yes", "yes", None, None, True),
    ("yes.", "Yes", None, None, True),
    ("YES", "yes", None, None, True),
    ("Yes, because the bar is taller.", "Yes", None, None, True),
    ("no", "Yes", None, None, False),
    ("No.", "no", None, None, True),
    # integers, decimals, thousands commas
    ("1,234", "1234", None, None, True),
    ("1234.0", "1,234", None, None, True),
    ("1,234,567", "1234567", None, None, True),
    ("-5", "−5", None, None, True),
    ("7", "7.0", None, None, True),
    ("12", "12.5", None, None, False),
    ("1,235", "1234", None, None, False),
    # units, currency, degrees
    ("5 cm", "5", None, None, True),
    ("5cm^2", "5", None, None, True),
    ("5 \\text{cm}^{2}", "5", None, None, True),
    ("12 square units", "12", None, None, True),
    ("$5", "5", None, None, True),
    ("\\$1,000", "1000 dollars", None, None, True),
    ("5 degrees", "5", None, None, True),
    ("5°", "5", None, None, True),
    ("30^{\\circ}", "30°", None, None, True),
    ("25°C", "25", None, None, True),
    ("3 apples", "3", None, "number", True),
    ("6 cm", "5 cm", None, None, False),
    ("5 million", "5", None, None, False),  # a magnitude word is not a unit
    ("2\\pi", "2", None, None, False),
    ("3x", "3", None, None, False),
    # percent: "50%" == "50", but 0.5 != 50%
    ("50%", "50", None, None, True),
    ("50", "50%", None, None, True),
    ("50\\%", "50", None, None, True),
    ("25 percent", "25%", None, None, True),
    ("0.5", "50%", None, None, False),
    # fractions
    ("0.75", "3/4", None, None, True),
    ("\\frac{3}{4}", "0.75", None, None, True),
    ("\\dfrac{3}{4}", "3/4", None, None, True),
    ("-\\frac{1}{2}", "-0.5", None, None, True),
    ("1/2", "\\frac12", None, None, True),
    ("0.3333", "1/3", None, None, False),
    # scientific notation
    ("1.5e3", "1500", None, None, True),
    ("1.5E+3", "1500", None, None, True),
    ("1500", "1.5 \\times 10^{3}", None, None, True),
    ("10^{3}", "1000", None, None, True),
    ("1.5e3", "150", None, None, False),
    # numeric tolerance: relative 1e-6, integers exact
    ("3.0000001", "3", None, None, True),
    ("0.1000002", "0.1", None, None, False),
    ("1000001", "1000000", None, None, False),
    # LaTeX expressions through math-verify
    ("2^{1/2}", "\\sqrt{2}", None, None, True),
    ("\\pi/2", "\\frac{\\pi}{2}", None, None, True),
    ("\\sqrt{8}", "2\\sqrt{2}", None, None, True),
    ("sqrt(2)", "\\sqrt{2}", None, None, True),
    ("(x+1)^2", "x^2+2x+1", None, None, True),
    ("x + 1", "x+1", None, None, True),
    ("x+2", "x+1", None, None, False),
    ("\\sqrt{3}", "\\sqrt{2}", None, "expression", False),
    ("y = 2x + 1", "y=2x+1", None, None, True),
    ("2\\sqrt{3}", "2\\sqrt{3}", None, "number", True),
    # lists and tuples
    ("(1,2,3)", "1, 2, 3", None, None, True),
    ("[1, 2, 3]", "(1,2,3)", None, None, True),
    ("1, 2, 3", "[1, 2, 3]", None, None, True),
    ("(1,3,2)", "(1,2,3)", None, None, False),  # bracketed gold: order matters
    ("3, 2", "2, 3", None, None, True),  # bare gold: order does not
    ("\\{2, 1\\}", "\\{1,2\\}", None, None, True),
    ("(1, 2)", "(1, 2, 3)", None, None, False),
    ("(\\frac{1}{2}, 3)", "(0.5, 3)", None, None, True),
    ("(1, 2]", "[1,2)", None, None, False),  # intervals are not lists
    ("(3, 4), (1, 2)", "(1,2), (3,4)", None, None, True),  # a bare list of points
    ("(1, 2), (3, 5)", "(1,2), (3,4)", None, None, False),
    # text
    ("Blue", "blue", None, None, True),
    ("  blue. ", "Blue", None, None, True),
    ("\\text{Light  Blue}", "light blue", None, None, True),
    ("red", "blue", None, None, False),
    ("east", "seat", None, None, False),  # never a product of symbols
    ("circle", "Circle", None, "text", True),
    ("(B)", "B", None, "text", True),  # lettered answer typed "text" (converted data)
    ("Option B", "B", None, "text", True),
    ("(C)", "B", None, "text", False),
    # wrapped answers
    ("\\boxed{7}", "7", None, None, True),
    ("x = 5", "5", None, None, True),
    ("$\\frac{1}{2}$", "0.5", None, None, True),
    ("The final answer is 42.", "42", None, None, True),
]


def _case_id(case: tuple) -> str:
    pred, gold, choices, answer_type, expected = case
    kind = f"[{answer_type}]" if answer_type else ""
    return f"{pred!r}~{gold!r}{'+choices' if choices else ''}{kind}={expected}"


@pytest.fixture(scope="module")
def warm_math_verify() -> None:
    """The first math-verify use in a process warms it up (~0.5 s, unbounded, once): keep that out of
    the timed calls."""
    assert answers_match("2^{1/2}", "\\sqrt{2}")


@pytest.mark.parametrize("case", MATCH_CASES, ids=[_case_id(c) for c in MATCH_CASES])
def test_answers_match(case: tuple, warm_math_verify: None) -> None:
    pred, gold, choices, answer_type, expected = case
    assert answers_match(pred, gold, choices, answer_type) is expected


@pytest.mark.parametrize("case", MATCH_CASES[::4], ids=[_case_id(c) for c in MATCH_CASES[::4]])
def test_score_completion_wraps_answers_match(case: tuple) -> None:
    """The same cases inside the full output format give the same verdict."""
    pred, gold, choices, answer_type, expected = case
    text = f"{THINK_OPEN}some reasoning{THINK_CLOSE}{ANSWER_OPEN}{pred}{ANSWER_CLOSE}"
    assert score_completion(text, gold, choices, answer_type) == (1.0 if expected else 0.0)


EXTRACT_CASES = [
    ("<think>3+4</think><answer> 7 </answer>", "7"),
    ("<think>a</think><answer>1</answer> then <answer>2</answer>", "2"),  # the last one
    ("<answer>The answer is \\boxed{\\frac{1}{2}}</answer>", "\\frac{1}{2}"),
    ("so \\boxed{\\frac{\\sqrt{3}}{2}} it is", "\\frac{\\sqrt{3}}{2}"),  # nested braces
    ("\\boxed{1} and finally \\boxed{2}", "2"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not count
    ("Reasoning...\nThe answer is B.", "B."),
    ("Final answer: 42\nThanks", "42"),
    ("<think>long thought</think>\n5\n", "5"),  # last line after the think block
    ("12", "12"),
    ("<think>abc", None),  # unclosed think: nothing committed
    ("<think>answer: 3", "3"),  # ...unless an answer phrase is there
    ("<think>x</think><answer>5", "5"),  # unclosed answer tag: its text is the last line
    ("", None),
    ("x" * 1_000_000, None),  # one megabyte-long line is not an answer
]


@pytest.mark.parametrize(("text", "expected"), EXTRACT_CASES, ids=[repr(t[:30]) for t, _ in EXTRACT_CASES])
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_the_format_the_prompt_asks_for_is_the_one_the_rewards_score() -> None:
    """The system prompt shows the model the output format by example; that example and
    :func:`tgrl.prompts.format_response` must earn the format reward and give back their answer (a tag
    renamed in prompt.yaml, in tgrl.prompts or in the reward code fails here)."""
    from tgrl.prompts import format_response, system_prompt

    tags = [re.escape(tag) for tag in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)]
    shown = re.search("{}[^<]*{}\\s*{}[^<]*{}".format(*tags), system_prompt())
    assert shown, f"the system prompt shows no {THINK_OPEN}...{ANSWER_CLOSE} example: {system_prompt()!r}"
    assert format_reward([shown.group(0)]) == [1.0] and extract_answer(shown.group(0)) == "answer"
    written = format_response("3 red, 4 blue", "7")
    assert format_reward([written]) == [1.0] and score_completion(written, "7") == 1.0


# ---------------------------------------------------------------- TRL reward functions


def test_accuracy_reward_plain_and_conversational_forms() -> None:
    completions = [
        "<think>red 3, blue 5, 5-3=2</think><answer>2</answer>",
        [{"role": "assistant", "content": "<think>r</think><answer>(B)</answer>"}],
        [
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "<think>r</think>"},
                    {"type": "text", "text": "<answer>blue</answer>"},
                ],
            }
        ],
        [{"role": "assistant", "content": "<think>r</think><answer>4</answer>"}],
        "The answer is \\boxed{\\frac{3}{4}}",
    ]
    golds = ["2", "B", "B", "5", "0.75"]
    choices = [None, ABCD, COLOURS, None, None]
    answer_types = ["number", "choice", "choice", "number", None]
    assert accuracy_reward(completions, golds, choices=choices, answer_type=answer_types) == [
        1.0,
        1.0,
        1.0,
        0.0,
        1.0,
    ]


def test_accuracy_reward_reads_answer_column_and_checks_lengths() -> None:
    assert accuracy_reward(["<answer>7</answer>"], answer=["7"]) == [1.0]
    with pytest.raises(ValueError, match="1 completions but 2 gold"):
        accuracy_reward(["<answer>7</answer>"], ["7", "8"])
    with pytest.raises(ValueError, match="solution"):
        accuracy_reward(["<answer>7</answer>"])


def test_completion_text_ignores_non_assistant_and_non_text_parts() -> None:
    messages = [
        {"role": "user", "content": "question"},
        {"role": "assistant", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]},
    ]
    assert completion_text(messages) == "hi"
    assert completion_text(None) == ""


UNPARSEABLE_GOLDS = [
    ("", None, None, "empty"),
    ("   ", None, None, "empty"),
    (None, None, None, "not a string"),
    ("9" * 2000, None, None, "too long"),
    ("F", ABCD, "choice", "choice answer matches no option letter or option text"),
    ("purple", COLOURS, "choice", "choice answer matches no option letter or option text"),
    ("abc", None, "number", "number answer is not a number"),
]


@pytest.mark.parametrize(("gold", "choices", "answer_type", "reason"), UNPARSEABLE_GOLDS)
def test_unparseable_gold_gives_none_counted_and_logged(
    gold: str | None,
    choices: list | None,
    answer_type: str | None,
    reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert check_gold(gold, choices, answer_type) == reason
    before = UNPARSEABLE_GOLD_COUNTS[reason]
    rewards._warned_golds.discard(str(gold)[:200])
    with caplog.at_level(logging.WARNING, logger="tgrl.rewards"):
        result = accuracy_reward(
            ["<answer>F</answer>", "<answer>1</answer>"],
            [gold, "1"],
            choices=[choices, None],
            answer_type=[answer_type, None],
        )
    assert result == [None, 1.0]
    assert UNPARSEABLE_GOLD_COUNTS[reason] == before + 1
    assert any(
        "cannot be scored" in r.getMessage() and str(gold)[:20] in r.getMessage() for r in caplog.records
    )
    assert score_completion("<answer>F</answer>", gold, choices, answer_type) == 0.0


def test_unknown_answer_type_is_an_error() -> None:
    with pytest.raises(ValueError, match="multiple_choice.*choice"):
        answers_match("B", "B", answer_type="multiple_choice")


FORMAT_CASES = [
    ("<think>a</think><answer>1</answer>", 1.0),
    ("  <think>\nred 3\n</think>\n<answer> 2 </answer>\n", 1.0),
    ("<think></think><answer>1</answer>", 1.0),  # an empty think block is still the format
    ("<answer>1</answer>", 0.0),
    ("<think>a</think>", 0.0),
    ("<think>a</think><answer></answer>", 0.0),  # empty answer
    ("<think>a</think><answer>1</answer> extra", 0.0),
    ("preamble <think>a</think><answer>1</answer>", 0.0),
    ("<think>a</think> between <answer>1</answer>", 0.0),
    ("<answer>1</answer><think>a</think>", 0.0),
    ("<think>a</think><answer>1</answer><answer>2</answer>", 0.0),
    ("<think>a<think>b</think><answer>1</answer>", 0.0),
    ("<think>a</think><answer>1", 0.0),
    ("\\boxed{1}", 0.0),
]


@pytest.mark.parametrize(("text", "expected"), FORMAT_CASES, ids=[repr(t) for t, _ in FORMAT_CASES])
def test_format_reward(text: str, expected: float) -> None:
    assert format_reward([text]) == [expected]
    assert format_reward([[{"role": "assistant", "content": text}]]) == [expected]


def test_registry() -> None:
    assert {"accuracy": accuracy_reward, "format": format_reward} == REWARD_FUNCS
    assert get_reward_funcs(["format", "accuracy"]) == [format_reward, accuracy_reward]
    with pytest.raises(ValueError, match="'acuracy'.*valid names: accuracy, format"):
        get_reward_funcs(["acuracy", "format"])


def test_docstring_examples() -> None:
    import tgrl.number_parsing as number_parsing

    result = doctest.testmod(rewards, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 10
    assert result.failed == 0
    result = doctest.testmod(number_parsing, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 1 and result.failed == 0


# ---------------------------------------------------------------- safety and time bounds

DEEP_FRAC = "\\frac{" * 1000 + "1" + "}{2}" * 1000
ADVERSARIAL = [
    ("1 MB, no tags", "x" * 1_000_000, "5"),
    ("1 MB answer", f"<think>a</think><answer>{'x' * 1_000_000}</answer>", "5"),
    ("10^6-digit number", f"<answer>{'9' * 1_000_000}</answer>", "9"),
    ("999-digit numbers on both sides", f"<answer>{'9' * 999}</answer>", "9" * 999 + "8"),
    ("150 digits", f"<answer>1{'0' * 150}</answer>", "1e150"),
    ("1000-deep braces in box", "\\boxed{" + "{" * 1000 + "1" + "}" * 1000 + "}", "1"),
    ("400-deep braces", f"<answer>{'{' * 400}1{'}' * 400}</answer>", "1"),
    ("1000-deep \\frac", f"<answer>{DEEP_FRAC}</answer>", "0.5"),
    ("boxed 1000-deep \\frac", f"\\boxed{{{DEEP_FRAC}}}", "0.5"),
    ("20-deep \\frac", "<answer>" + "\\frac{" * 20 + "1" + "}{2}" * 20 + "</answer>", "\\frac{1}{2}"),
    ("10^{10^{10}}", "<answer>10^{10^{10}}</answer>", "1"),
    ("10^{10^{10}} both", "<answer>10^{10^{10}}</answer>", "10^{10^{11}}"),
    ("9^9^9^9", "<answer>9^9^9^9</answer>", "2"),
    ("9^{9}^{9}", "<answer>9^{9}^{9}</answer>", "2"),
    ("tower in parens", "<answer>((10^{99})^{99})^{99}</answer>", "1"),
    ("2^{10^{100}}", "<answer>2^{10^{100}}</answer>", "x"),
    ("1e999999", "<answer>1e999999</answer>", "1"),
    ("10^{9999} scientific", "<answer>1.5 \\times 10^{9999}</answer>", "1"),
    ("huge factorial", "<answer>1000000!</answer>", "1"),
    ("nested factorial", "<answer>(99!)!</answer>", "1"),
    ("sum", "<answer>\\sum_{i=1}^{99} i^{9}</answer>", "1"),
    ("binomial expansion", "<answer>(x+1)^{99}</answer>", "x^{99}"),
    ("multinomial expansion", "<answer>(a+b+c+d+e)^{99}</answer>", "(a+b+c+d+e)^{98}"),
    ("trig simplify", "<answer>\\sin(x)^{9}\\cos(x)^{9}\\tan(x)^{9}</answer>", "\\sin(2x)^{9}/512"),
    ("integral", "<answer>\\int_0^{99} e^{x^2} dx</answer>", "1"),
    ("100k unbalanced boxes", "\\boxed{" * 100_000, "1"),
    ("100k answer tags", "<answer>" * 100_000, "1"),
    ("100k answer phrases", "the answer is " * 100_000, "1"),
    ("100k think tags", "<think>" * 100_000 + "</think>" * 100_000, "1"),
    ("400-item list", "<answer>" + "1," * 400 + "2</answer>", ",".join(["1"] * 401)),
    ("500-deep parens", f"<answer>{'(' * 500}{')' * 500}</answer>", "1"),
    ("1 MB gold", "<answer>B</answer>", "A" * 1_000_000),
    ("a million newlines", "a" * 999 + "\n" * 1_000_000, "a"),
    ("code, not maths", "<answer>__import__('os').system('echo pwned')</answer>", "0"),
]


@pytest.mark.parametrize(("name", "text", "gold"), ADVERSARIAL, ids=[name for name, _, _ in ADVERSARIAL])
def test_pathological_completion_scores_zero_fast(
    name: str, text: str, gold: str, warm_math_verify: None
) -> None:
    started = time.perf_counter()
    score = score_completion(text, gold)
    elapsed = time.perf_counter() - started
    assert score == 0.0
    assert elapsed < TIME_LIMIT_SECONDS, f"{name}: {elapsed:.2f}s"


def test_bounded_in_worker_threads_too(warm_math_verify: None) -> None:
    """Trainers and scorers may call rewards from a thread pool: no signal alarm works there, the
    per-thread trace deadline and the pre-checks must still bound every call."""
    slowest = [
        case for case in ADVERSARIAL if "expansion" in case[0] or "trig" in case[0] or case[0] == "sum"
    ]
    assert len(slowest) == 4

    def timed(text: str, gold: str) -> tuple[float, float]:
        started = time.perf_counter()
        return score_completion(text, gold), time.perf_counter() - started

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda case: timed(case[1], case[2]), slowest))
        legit = pool.submit(timed, "<answer>(x+1)^2</answer>", "x^2+2x+1").result()
    for (score, elapsed), (name, _, _) in zip(results, slowest, strict=True):
        assert score == 0.0
        assert elapsed < TIME_LIMIT_SECONDS, f"{name} in a thread pool: {elapsed:.2f}s"
    assert legit[0] == 1.0  # the same verdict as in the main thread


def test_previous_trace_function_is_restored() -> None:
    """The deadline borrows sys.settrace for the math-verify call only (debuggers, coverage)."""
    seen: list[str] = []

    def tracer(frame, event, arg):  # noqa: ANN001, ANN202
        seen.append(event)

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        assert answers_match("x^2 + 2x + 1", "(x+1)^2")
        assert sys.gettrace() is tracer
        assert "call" in seen  # it was live before and after
    finally:
        sys.settrace(previous)


def test_answer_text_never_reaches_eval(monkeypatch: pytest.MonkeyPatch, warm_math_verify: None) -> None:
    """Our code never evals; math-verify's LaTeX parser hands only lexer-checked number tokens to
    sympy.Number (which evals ``Integer (2 )``). Spy on eval/exec across every case: each evaluated
    string is at most one name applied to one literal, and the attacker's text reaches neither.
    (exec also runs for lazy imports and generated dataclass code, so it is watched, not banned.)"""
    evaluated: list[str] = []
    executed: list[str] = []
    real_eval, real_exec = builtins.eval, builtins.exec

    def spy_eval(source, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        evaluated.append(source if isinstance(source, str) else "<code object>")
        return real_eval(source, *args, **kwargs)

    def spy_exec(source, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        executed.append(source if isinstance(source, str) else "<code object>")
        return real_exec(source, *args, **kwargs)

    monkeypatch.setattr(builtins, "eval", spy_eval)
    monkeypatch.setattr(builtins, "exec", spy_exec)
    verdicts = [answers_match(p, g, c, t) for p, g, c, t, _ in MATCH_CASES]
    attack = "__import__('os').system('echo pwned')"
    assert not answers_match(attack, "0")
    assert not answers_match(f"\\frac{{{attack}}}{{2}}", "x")
    assert not answers_match(f"x + {attack}", "x")
    monkeypatch.undo()
    assert verdicts == [expected for *_, expected in MATCH_CASES]  # spying changed nothing
    one_literal = re.compile(r"[A-Za-z]*\s*(?:\(\s*(?:\d+|'[\w.]*')\s*\))?\s*|<code object>")
    assert [code for code in evaluated if not one_literal.fullmatch(code)] == []
    assert [code for code in evaluated + executed if "pwned" in code or "__import__" in code] == []


_COLD_FIRST_CALL = """
import json, time
from tgrl import bounded_math_verify
from tgrl.rewards import MV_TIME_BUDGET_SECONDS, get_reward_funcs
cold = not bounded_math_verify._mv_warmed_up.is_set()
(accuracy,) = get_reward_funcs(["accuracy"])          # construction: the one-time warm-up happens here
warm = bounded_math_verify._mv_warmed_up.is_set()
start = time.perf_counter()
score = accuracy(["<think>factor</think><answer>(x-1)(x+1)</answer>"], ["x^2-1"])
seconds = time.perf_counter() - start
again = accuracy(["<think>factor</think><answer>(x-1)(x+1)</answer>"], ["x^2-1"])
print(json.dumps({"seconds": seconds, "score": score, "again": again, "budget": MV_TIME_BUDGET_SECONDS,
                  "warmed_by_construction": cold and warm}))
"""


def test_first_latex_comparison_in_a_fresh_process_keeps_the_time_bound() -> None:
    """Issue 11, item 10: a cold math-verify took 1-2 s on its first comparison, against a per-call bound
    of MV_TIME_BUDGET_SECONDS; with the warm-up at construction the first call is as fast as any other."""
    import json
    import os
    import subprocess

    from tgrl.utils import REPO_ROOT

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _COLD_FIRST_CALL],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["again"] == [1.0]  # the pair is equal under math-verify (it needs it: no cheap rule)
    # The cold start happens at construction, not inside the first (timed) call: checked on the flag,
    # which no machine load can move. The time bound is generous (before the fix: 1-2 s cold inside the
    # call; a busy 2-core machine can add a second to a bounded one). The first call's score is not
    # asserted: under load the deadline, not this test, decides what happens past the budget.
    assert measured["warmed_by_construction"], measured
    assert measured["seconds"] < measured["budget"] + 1.5, measured
