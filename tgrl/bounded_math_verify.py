"""math-verify under a time bound: the last-resort LaTeX comparison of :func:`tgrl.rewards.answers_match`.

Reward parsing must never run text and never stall a rollout, so math-verify only sees inputs that pass
:func:`prepare_for_math_verify`, runs under a per-call deadline (:class:`Budget`) enforced by a
``sys.settrace`` hook that works in any thread (math-verify's own ``signal.alarm`` timeouts fail outside
the main thread), and is warmed up once by :func:`warm_up`. The bounds and why:
docs/design.md#102-files-and-resume.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import math_verify.grader
import math_verify.parser
from math_verify import LatexExtractionConfig, parse, verify

# math-verify limits. Python-level sympy work is interrupted by the deadline tracer, but a
# C-level big-integer operation is not interruptible at all, hence the pre-checks everywhere.
MV_MAX_CHARS = 300
MV_MAX_DEPTH = 10
MV_MAX_CARETS = 4
MV_MAX_POWER_PRODUCT = 1000  # with <= 30-digit bases: results of at most ~30,000 digits
MV_TIME_BUDGET_SECONDS = 0.5  # per answers_match call: parsing the gold (cached), the prediction, verify
_MV_CONFIG = [LatexExtractionConfig()]

# We pass timeout=None to math-verify (see module docstring); silence its one-time warning that
# says the caller must bound the time itself, which we do.
math_verify.parser.TIMEOUT_WARNING_SHOWN = True
math_verify.grader.TIMEOUT_WARNING_SHOWN = True


class _Timeout(BaseException):
    """Raised by our deadline tracer; a BaseException so ``except Exception`` (math-verify wraps every
    step in one) cannot swallow it. (sympy, latex2sympy2 and antlr4 have no bare ``except:``.)

    A generator that the garbage collector finalises after the deadline gets it in its finalizer,
    where Python prints "Exception ignored" (a PytestUnraisableExceptionWarning in the adversarial
    tests); harmless: the next traced event raises again and the call still ends as timed out."""


def _call_with_deadline(function: Callable[[], Any], seconds: float) -> tuple[bool, Any]:
    """Run ``function``; stop it once ``seconds`` have passed. Returns (finished, result).

    Why a trace function and not an alarm: ``sys.settrace`` is per thread, so this works the same in
    the main thread and in a trainer's or scorer's thread pool, needs no signal handler (nothing to
    clash with pytest-timeout or math-verify's own ``signal.alarm``) and allows sub-second limits.
    It checks the clock on Python calls and lines, which covers sympy; a single long C-level
    operation (a huge integer power) cannot be interrupted, which is why
    :func:`prepare_for_math_verify` rejects those inputs beforehand.
    """
    deadline = time.monotonic() + seconds
    calls = [0]

    def on_event(frame: Any, event: str, arg: Any) -> Callable:
        calls[0] += 1
        if calls[0] % 64 == 0 and time.monotonic() > deadline:
            raise _Timeout
        return on_event  # also trace lines: pure-Python loops (multinomial expansion) are interrupted

    previous_tracer = sys.gettrace()
    sys.settrace(on_event)
    try:
        return True, function()
    except _Timeout:
        return False, None
    finally:
        sys.settrace(previous_tracer)


_FUNCTION_WORD_RE = re.compile(r"(?<![\\A-Za-z])(sqrt|pi|sin|cos|tan|log|ln|exp|infty)(?![A-Za-z])")
_PLAIN_SQRT_RE = re.compile(r"(?<!\\)\bsqrt\s*\(([^()]{1,50})\)")
_EXPONENT_TOO_BIG_RE = re.compile(r"\^\s*\{?\s*[+-]?\d{3,}")
_LONG_DIGIT_RUN_RE = re.compile(r"\d{31,}")
_WORD_RE = re.compile(r"[A-Za-z]{3,}")
_LATEX_COMMAND_RE = re.compile(r"\\[A-Za-z]+")
_FACTORIAL_OK_RE = re.compile(r"(?<!\d)\d{1,2}!")
_SCIENTIFIC_NOTATION_RE = re.compile(r"\d\s*[eE]\s*[+-]?\d")


def _operand_end(text: str, start: int) -> int:
    """Index just past the exponent operand that begins at ``start``: a bracket group, a LaTeX
    command, a digit run, or one character."""
    if start >= len(text):
        return start
    if text[start] in "{(":
        depth = 0
        for j in range(start, len(text)):
            if text[j] in "([{":
                depth += 1
            elif text[j] in ")]}":
                depth -= 1
                if depth == 0:
                    return j + 1
        return len(text)
    match = re.compile(r"\\[A-Za-z]+|\d+|.", re.DOTALL).match(text, start)
    return match.end() if match else start + 1


def _powers_or_nesting_unsafe(text: str) -> bool:
    """Bracket depth over ``MV_MAX_DEPTH``, a power inside an exponent (``10^{10^{10}}``), a chained
    power (``9^9^9``: which way it associates is up to the parser), or exponents whose product
    exceeds ``MV_MAX_POWER_PRODUCT``: results sympy would compute digit by digit in C code that no
    deadline can interrupt."""
    depth = 0
    power_product = 1
    exponent_ends: list[int] = []  # operand ends of the powers seen so far
    i = 0
    while i < len(text):
        char = text[i]
        if char in "([{":
            depth += 1
            if depth > MV_MAX_DEPTH:
                return True
        elif char in ")]}":
            depth -= 1
        elif char == "^":
            if exponent_ends and (i < exponent_ends[-1] or not text[exponent_ends[-1] : i].strip()):
                return True
            start = i + 1
            while start < len(text) and text[start] == " ":
                start += 1
            end = _operand_end(text, start)
            operand = text[start:end]
            if "^" in operand:
                return True
            power_product *= max([1, *(int(run) for run in re.findall(r"\d{1,3}", operand))])
            if power_product > MV_MAX_POWER_PRODUCT:
                return True
            exponent_ends.append(end)
        i += 1
    return False


def prepare_for_math_verify(text: str) -> str | None:
    """The LaTeX string handed to math-verify, or ``None`` when the input is not safe or not maths.

    Rejected: long strings, deep nesting, nested or 3+-digit exponents, 31+-digit numbers, "**",
    factorials of 3+-digit numbers, and anything with a word of 3+ letters outside a LaTeX command
    (plain words are not maths: sympy would read "east" and "seat" as the same product), and
    scientific notation too large for our own number parser (1e999999).
    """
    text = _PLAIN_SQRT_RE.sub(r"\\sqrt{\1}", text)
    text = _FUNCTION_WORD_RE.sub(r"\\\1", text).replace("\n", " ").strip()
    if not text or len(text) > MV_MAX_CHARS:
        return None
    if "**" in text or text.count("^") > MV_MAX_CARETS or "$" in text:
        return None
    if _EXPONENT_TOO_BIG_RE.search(text) or _LONG_DIGIT_RUN_RE.search(text):
        return None
    if "!" in text and text.count("!") != len(_FACTORIAL_OK_RE.findall(text)):
        return None
    if _SCIENTIFIC_NOTATION_RE.search(text):
        return None
    if _WORD_RE.search(_LATEX_COMMAND_RE.sub(" ", text)):
        return None
    if _powers_or_nesting_unsafe(text):
        return None
    return text


def _mv_parse(latex: str) -> list:
    return parse(f"${latex}$", extraction_config=_MV_CONFIG, parsing_timeout=None)


_mv_warmed_up = threading.Event()


_MV_WARM_UP_PAIRS = (  # one of each kind of sympy work a comparison can need (measured)
    ("\\sqrt{2}+\\frac{1}{2}x^2", "2^{1/2}+0.5x^{2}"),
    ("(x+1)^2", "x^2+2x+1"),
    ("(x+2)(x-3)", "x^2-x-6"),  # products of sums: expansion (cold: ~0.5 s on its own)
    ("\\frac{x^2-1}{x+1}", "x-1"),  # rational functions: cancel
    ("y=2x+1", "y=1+2x"),
    ("[1,2)", "\\{1,2\\}"),
    ("\\sin(\\pi/3)", "\\frac{\\sqrt{3}}{2}"),
    ("\\frac{\\pi}{4}", "\\pi/4"),
    ("2\\sqrt{3}", "\\sqrt{12}"),
    ("e^{\\ln 2}", "2"),
    ("(1,2)", "(1,2)"),
)


def warm_up() -> None:
    """On first use math-verify compiles its large regexes and sympy imports and caches whole
    subsystems (simplify, polys, sets): several times the per-call budget. Do that once per process,
    unbounded, on fixed inputs (~0.5 s), so a correct answer never scores 0 just for being early."""
    if _mv_warmed_up.is_set():
        return
    for gold, pred in _MV_WARM_UP_PAIRS:
        verify(_mv_parse(gold), _mv_parse(pred), timeout_seconds=None)
    _mv_warmed_up.set()


_mv_gold_cache: dict[str, tuple] = {}
_MV_GOLD_CACHE_SIZE = 4096


def _mv_parse_gold(latex: str, budget: Budget) -> tuple:
    """Golds repeat for every rollout of a group: parse each once (empty when it cannot be parsed).
    A parse cut short by the budget is not cached: a slow moment of the machine must not stick."""
    if not latex:
        return ()
    warm_up()
    cached = _mv_gold_cache.get(latex)
    if cached is not None:
        return cached
    finished, parsed = _call_with_deadline(lambda: _mv_parse(latex), budget.remaining())
    if not finished:
        return ()
    if len(_mv_gold_cache) >= _MV_GOLD_CACHE_SIZE:
        _mv_gold_cache.clear()
    _mv_gold_cache[latex] = tuple(parsed)
    return _mv_gold_cache[latex]


class Budget:
    """Time math-verify may still spend within one :func:`answers_match` call; the clock starts at
    first use (after the one-time warm-up), so cheap rules never eat into it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline: float | None = None

    def remaining(self) -> float:
        if self.deadline is None:
            self.deadline = time.monotonic() + self.seconds
        return self.deadline - time.monotonic()


def math_verify_equal(gold_text: str, pred_text: str, budget: Budget) -> bool:
    gold_latex = prepare_for_math_verify(gold_text)
    pred_latex = prepare_for_math_verify(pred_text)
    if gold_latex is None or pred_latex is None:
        return False
    gold_parsed = _mv_parse_gold(gold_latex, budget)
    remaining = budget.remaining()
    if not gold_parsed or remaining <= 0.01:
        return False

    def parse_and_verify() -> bool:
        pred_parsed = _mv_parse(pred_latex)
        return bool(pred_parsed) and verify(list(gold_parsed), pred_parsed, timeout_seconds=None)

    finished, equal = _call_with_deadline(parse_and_verify, remaining)
    return bool(finished and equal)


def parses(text: str) -> bool:
    """Whether math-verify reads ``text`` (a cleaned answer) as mathematics, within one call's budget."""
    return bool(_mv_parse_gold(prepare_for_math_verify(text) or "", Budget(MV_TIME_BUDGET_SECONDS)))
