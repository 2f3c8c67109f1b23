"""Accuracy and format rewards in TRL's reward-function signature, plus the one answer comparison.

RL rewards, filter F1 and the evaluation scorers must judge answers the same way, or training optimises
something other than what we report, so :func:`answers_match` is the single comparison and everything
else calls it. The module reads top to bottom as the pipeline: extraction (:func:`extract_answer`),
normalisation, matching, then the TRL reward functions. Matching rules: docs/design.md#43-output-format;
safety and time bounds: docs/design.md#102-files-and-resume.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any

from tgrl import bounded_math_verify
from tgrl.bounded_math_verify import MV_TIME_BUDGET_SECONDS, Budget, math_verify_equal, warm_up
from tgrl.number_parsing import numbers_close, parse_number
from tgrl.prompts import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN

__all__ = [
    "ANSWER_CLOSE",
    "ANSWER_OPEN",
    "ANSWER_TYPES",
    "REWARD_FUNCS",
    "THINK_CLOSE",
    "THINK_OPEN",
    "UNPARSEABLE_GOLD_COUNTS",
    "accuracy_reward",
    "answers_match",
    "check_gold",
    "completion_text",
    "extract_answer",
    "follows_format",
    "format_reward",
    "get_reward_funcs",
    "score_completion",
    "warm_up",
]

logger = logging.getLogger(__name__)

ANSWER_TYPES = ("choice", "number", "text", "expression")

MAX_ANSWER_CHARS = 1000  # an extracted answer longer than this scores 0 (no answer is that long)
MAX_LIST_ITEMS = 50
FALLBACK_TAIL_CHARS = 2000  # the plain-text fallback only looks at the end of a completion
BOXED_SCAN_CHARS = 4000  # brace matching after \boxed stops here
MAX_BOXED_TRIES = 3

UNPARSEABLE_GOLD_COUNTS: Counter[str] = Counter()
"""How many rows :func:`accuracy_reward` scored ``None``, by reason (read ``sum(...values())``)."""
_gold_lock = threading.Lock()
_warned_golds: set[str] = set()
_MAX_WARNED_GOLDS = 10_000


# --------------------------------------------------------------------------------------------------
# Completion text and extraction
# --------------------------------------------------------------------------------------------------


def completion_text(completion: Any) -> str:
    """The assistant text of one completion: a string, or TRL's conversational form (a list of
    message dicts whose ``content`` is a string or a list of ``{"type": "text", "text": ...}`` parts).

    Example:
        >>> completion_text([{"role": "assistant", "content": [{"type": "text", "text": "hi"}]}])
        'hi'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if not isinstance(completion, list | tuple):
        return ""
    pieces: list[str] = []
    for message in completion:
        if not isinstance(message, dict) or message.get("role", "assistant") != "assistant":
            continue
        content = message.get("content")
        if isinstance(content, str):
            pieces.append(content)
        elif isinstance(content, list | tuple):
            pieces.extend(
                part.get("text") or ""
                for part in content
                if isinstance(part, dict) and part.get("type", "text") == "text"
            )
    return "".join(pieces)


def _last_boxed(text: str) -> str | None:
    """Content of the last balanced ``\\boxed{...}`` (or ``\\fbox{...}``): an iterative brace count
    over at most ``BOXED_SCAN_CHARS`` characters, so deep nesting costs linear time, never recursion."""
    search_end = len(text)
    for _ in range(MAX_BOXED_TRIES):
        start = max(text.rfind("\\boxed", 0, search_end), text.rfind("\\fbox", 0, search_end))
        if start == -1:
            return None
        search_end = start
        i = text.find("{", start)
        if i == -1 or text[start:i].strip() not in ("\\boxed", "\\fbox"):
            continue
        depth = 0
        limit = min(len(text), i + BOXED_SCAN_CHARS)
        j = i
        while j < limit:
            char = text[j]
            if char == "\\":
                j += 2  # an escaped character (\{ or \}) does not count
                continue
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    return text[i + 1 : j]
            j += 1
    return None


_ANSWER_PHRASE_RE = re.compile(r"(?i)\banswer\s*(?:is|:)\s*:?\s*")
_TAG_RE = re.compile(r"</?(?:think|answer)>")


def extract_answer(text: str) -> str | None:
    """The answer a completion commits to, or ``None``.

    Rules, first that applies wins:
      1. the content of the last complete ``<answer>...</answer>`` (if it contains a ``\\boxed{}``,
         the boxed content);
      2. the last balanced ``\\boxed{...}`` anywhere;
      3. fallback, on the text after the last ``</think>`` (the whole text if there is none), within
         its last 2,000 characters: the rest of the line after the last "answer is" / "answer:";
         else the last non-empty line, tags stripped. No last-line fallback when a ``<think>`` is
         left unclosed (a truncated generation has not committed to anything).

    Example:
        >>> extract_answer("<think>3+4</think><answer> 7 </answer>")
        '7'
        >>> extract_answer("so x = \\\\boxed{\\\\frac{1}{2}}")
        '\\\\frac{1}{2}'
        >>> extract_answer("Reasoning...\\nThe answer is B.")
        'B.'
    """
    if not isinstance(text, str):
        return None
    close = text.rfind(ANSWER_CLOSE)
    if close != -1:
        start = text.rfind(ANSWER_OPEN, 0, close)
        if start != -1:
            inner = text[start + len(ANSWER_OPEN) : close]
            boxed = _last_boxed(inner) if "\\boxed" in inner or "\\fbox" in inner else None
            return (boxed if boxed is not None else inner).strip()
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    return _fallback_answer(text)


def _fallback_answer(text: str) -> str | None:
    think_close = text.rfind(THINK_CLOSE)
    region = text[think_close + len(THINK_CLOSE) :] if think_close != -1 else text
    unclosed_think = think_close == -1 and THINK_OPEN in text
    window = region[-FALLBACK_TAIL_CHARS:]
    window_is_partial = len(region) > FALLBACK_TAIL_CHARS
    phrases = list(_ANSWER_PHRASE_RE.finditer(window))
    if phrases:
        candidate = _TAG_RE.sub(" ", window[phrases[-1].end() :].split("\n", 1)[0]).strip()
        if candidate:
            return candidate
    if unclosed_think:
        return None
    lines = [line for line in _TAG_RE.sub(" ", window).split("\n") if line.strip()]
    if not lines:
        return None
    if len(lines) == 1 and window_is_partial and "\n" not in window:
        return None  # the line started before the window: far too long to be an answer
    return lines[-1].strip()


# --------------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------------

_TEXT_COMMAND_RE = re.compile(
    r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mathit|operatorname|mbox)\s*\{([^{}]*)\}"
)
_SPACING_RE = re.compile(r"\\[,;:! ]|\\(?:left|right|displaystyle|quad|qquad)(?![A-Za-z])|~")
_ANSWER_PREFIX_RE = re.compile(
    r"(?i)^(?:(?:so|thus|therefore|hence)\s*,?\s+)?(?:the\s+)?(?:final\s+|correct\s+|right\s+|best\s+)?"
    r"(?:answer|option|choice)(?:\s+is)?\s*[:：]?\s*(?=\S)"
)
_ASSIGNMENT_RE = re.compile(r"^[A-Za-z](?:_\{?\w{1,5}\}?)?\s*=\s*(?=[^=]+$)")
_APPROX_RE = re.compile(r"^(?:\\approx|≈|~)\s*")
_UNICODE_REPLACEMENTS = {
    "−": "-",
    "–": "-",
    "×": "\\times ",
    "÷": "\\div ",
    "²": "^2",
    "³": "^3",
    "，": ",",
    "：": ":",
    "（": "(",
    "）": ")",
    "\u00a0": " ",
}


def _unwrap_text_commands(text: str) -> str:
    for _ in range(3):
        unwrapped = _TEXT_COMMAND_RE.sub(r"\1", text)
        if unwrapped == text:
            break
        text = unwrapped
    return text


def _clean(text: str) -> str:
    """Strip the wrapping that never changes an answer's meaning: boxes, math delimiters, markdown,
    spacing commands, "The answer is", "x =", a trailing full stop."""
    text = text.strip()
    if "\\boxed" in text or "\\fbox" in text:
        boxed = _last_boxed(text)
        if boxed is not None:
            text = boxed.strip()
    for old, new in _UNICODE_REPLACEMENTS.items():
        text = text.replace(old, new)
    text = text.replace("**", "").replace("`", "").replace("\\$", "$").replace("$", "")
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = _SPACING_RE.sub(" ", text)
    text = _unwrap_text_commands(text).strip()
    for opener, closer in (("\\(", "\\)"), ("\\[", "\\]")):
        if text.startswith(opener) and text.endswith(closer):
            text = text[len(opener) : -len(closer)].strip()
    for _ in range(3):
        stripped = _ANSWER_PREFIX_RE.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    text = _APPROX_RE.sub("", text)
    text = _ASSIGNMENT_RE.sub("", text)
    text = text.rstrip()
    while text.endswith((".", "。")) and not text.endswith(".."):
        text = text[:-1].rstrip()
    return text


def _text_key(text: str) -> str:
    """Case-, whitespace- and edge-punctuation-insensitive key ("Blue." and " blue" agree)."""
    text = _unwrap_text_commands(text).lower()
    text = text.strip(" \t\r\n.,;:!?'\"`")
    text = re.sub(r"\s*([^\w\s])\s*", r"\1", text)
    return re.sub(r"\s+", " ", text)


def _yes_no(text: str) -> str | None:
    key = _text_key(text)
    if key in ("yes", "no"):
        return key
    first = re.match(r"(yes|no)\s*[,.!;:]", key)
    return first.group(1) if first else None


# --------------------------------------------------------------------------------------------------
# Multiple choice
# --------------------------------------------------------------------------------------------------

_LETTER_ONLY_RE = re.compile(r"^[(\[{]?\s*([A-Za-z])\s*[)\]}]?\s*[.:)]?$")
_LETTER_WITH_TEXT_RE = re.compile(
    r"^(?:[(\[]\s*([A-Za-z])\s*[)\]]\s*[.:]?|([A-Za-z])\s*[.:)])\s+\S", re.DOTALL
)


def _letter_index(letter: str) -> int:
    return ord(letter.upper()) - ord("A")


def _letter_of(text: str, n_choices: int | None, uppercase_only: bool) -> str | None:
    """The option letter a cleaned answer spells ("B", "(b)", "B. text", ...), if any and in range."""
    match = _LETTER_ONLY_RE.match(text)
    letter = match.group(1) if match else None
    if letter is None and not uppercase_only:
        match = _LETTER_WITH_TEXT_RE.match(text)
        letter = (match.group(1) or match.group(2)) if match else None
    if letter is None or (uppercase_only and not letter.isupper()):
        return None
    if n_choices is not None and _letter_index(letter) >= n_choices:
        return None
    return letter.upper()


def _strip_own_letter(choice: str, index: int) -> str:
    """ "(A) 5 cm" -> "5 cm" when a dataset repeats the letter inside option ``index``'s text."""
    match = _LETTER_WITH_TEXT_RE.match(choice)
    if match and _letter_index(match.group(1) or match.group(2)) == index:
        return re.sub(r"^[(\[]?\s*[A-Za-z]\s*[)\]]?\s*[.:)]?\s+", "", choice, count=1)
    return choice


def _cheap_equal(a: str, b: str) -> bool:
    """Text, yes/no or number equality (no math-verify): used to map answers onto choice texts."""
    if _text_key(a) == _text_key(b):
        return True
    number_a, number_b = parse_number(a), parse_number(b)
    return number_a is not None and number_b is not None and numbers_close(number_a, number_b)


def _choice_letters(text: str, choices: tuple[str, ...] | None, uppercase_only: bool) -> frozenset[str]:
    letter = _letter_of(text, len(choices) if choices else None, uppercase_only)
    if letter is not None:
        return frozenset({letter})
    if not choices:
        return frozenset()
    return frozenset(chr(ord("A") + i) for i, choice in enumerate(choices) if _cheap_equal(text, choice))


# --------------------------------------------------------------------------------------------------
# Lists
# --------------------------------------------------------------------------------------------------

_BRACKET_PAIRS = {"(": ")", "[": "]", "{": "}"}


def _split_list(text: str) -> tuple[list[str], str] | None:
    """Split "1, 2, 3" / "(1,2,3)" / "[1, 2, 3]" / "\\{1,2\\}" at top-level commas.

    Returns (items, kind) with kind "ordered" (() or []), "unordered" (bare or a set), or ``None``
    when the text is not a list (no top-level comma, a number with thousands commas, or an interval
    with mixed brackets such as "(1, 2]").
    """
    text = text.strip()
    kind = "unordered"
    if text.startswith("\\{") and text.endswith("\\}"):
        text = text[2:-2].strip()
    elif text[:1] in _BRACKET_PAIRS and _encloses_whole(text):
        kind = "ordered" if text[0] in "([" else "unordered"
        text = text[1:-1].strip()
    elif text[:1] in "([" and text[-1:] in ")]" and _BRACKET_PAIRS[text[0]] != text[-1]:
        return None  # "(1, 2]": an interval, not a list
    items: list[str] = []
    depth = 0
    start = 0
    for i, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char in ",;" and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
    items.append(text[start:].strip())
    if len(items) < 2 or len(items) > MAX_LIST_ITEMS or not all(items):
        return None
    return items, kind


def _encloses_whole(text: str) -> bool:
    """True when the first bracket of ``text`` closes at its last character: "(1,2)" yes, "(1)(2)" no."""
    if text[-1:] != _BRACKET_PAIRS[text[0]]:
        return False
    depth = 0
    for i, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth == 0 and i != len(text) - 1:
                return False
    return depth == 0


# --------------------------------------------------------------------------------------------------
# Gold answers and the comparison
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Gold:
    """A gold answer parsed once (cached): what kind it is and its comparable forms."""

    text: str
    answer_type: str | None
    choices: tuple[str, ...] | None
    letters: frozenset[str]  # non-empty: multiple choice
    yes_no: str | None
    items: tuple[str, ...] | None  # a list answer
    ordered: bool
    number: Fraction | None


def _normalise_choices(choices: Any) -> tuple[str, ...] | None:
    if not isinstance(choices, list | tuple) or not choices:
        return None
    return tuple(_strip_own_letter(_clean(str(c)), i) for i, c in enumerate(choices))


def _validate_answer_type(answer_type: str | None) -> str | None:
    if answer_type in (None, ""):
        return None
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"answer_type {answer_type!r} is not one of {', '.join(ANSWER_TYPES)} (or None)")
    return answer_type


def _parse_gold(gold: Any, choices: tuple[str, ...] | None, answer_type: str | None) -> _Gold | str:
    """A :class:`_Gold`, or the reason the gold cannot be used (a short string)."""
    if not isinstance(gold, str | int | float) or isinstance(gold, bool):
        return "not a string"
    gold = str(gold)
    if len(gold) > MAX_ANSWER_CHARS:
        return "too long"
    return _parse_gold_cached(gold, choices, answer_type)


@lru_cache(maxsize=8192)
def _parse_gold_cached(gold: str, choices: tuple[str, ...] | None, answer_type: str | None) -> _Gold | str:
    text = _clean(gold)
    if not text:
        return "empty"
    letters: frozenset[str] = frozenset()
    if choices or answer_type == "choice":
        letters = _choice_letters(text, choices, uppercase_only=False)
        if not letters and answer_type == "choice":
            return "choice answer matches no option letter or option text"
    elif answer_type in (None, "text"):
        # A lone capital letter is read as an option letter even without choices ("(B)" == "B"): converted
        # sets (ViRL39K) keep lettered answers typed "text" when their options cannot be parsed out.
        letters = _choice_letters(text, None, uppercase_only=True)
    number = parse_number(text)
    if answer_type == "number" and number is None and not bounded_math_verify.parses(text):
        return "number answer is not a number"
    split = _split_list(text) if number is None else None
    return _Gold(
        text=text,
        answer_type=answer_type,
        choices=choices,
        letters=letters,
        yes_no=_yes_no(text) if _text_key(text) in ("yes", "no") else None,
        items=tuple(split[0]) if split else None,
        ordered=bool(split) and split[1] == "ordered",
        number=number,
    )


def _scalar_match(
    pred: str, gold_text: str, gold_number: Fraction | None, use_math: bool, budget: Budget
) -> bool:
    if _text_key(pred) == _text_key(gold_text):
        return True
    if gold_number is not None:
        pred_number = parse_number(pred)
        if pred_number is not None:
            return numbers_close(gold_number, pred_number)
    return use_math and math_verify_equal(gold_text, pred, budget)


def _lists_match(pred_items: list[str], gold: _Gold, budget: Budget) -> bool:
    assert gold.items is not None
    if len(pred_items) != len(gold.items):
        return False
    use_math = gold.answer_type != "text"
    gold_numbers = [parse_number(g) for g in gold.items]
    if gold.ordered:
        return all(
            _scalar_match(p, g, n, use_math, budget)
            for p, g, n in zip(pred_items, gold.items, gold_numbers, strict=True)
        )
    unmatched = list(range(len(gold.items)))
    for p in pred_items:
        hit = next(
            (i for i in unmatched if _scalar_match(p, gold.items[i], gold_numbers[i], use_math, budget)),
            None,
        )
        if hit is None:
            return False
        unmatched.remove(hit)
    return True


def _match(pred: str, gold: _Gold) -> bool:
    budget = Budget(MV_TIME_BUDGET_SECONDS)
    if gold.letters:
        pred_letters = _choice_letters(pred, gold.choices, uppercase_only=False)
        if pred_letters or not gold.choices:
            return bool(pred_letters & gold.letters)
        # Neither a letter nor a choice text verbatim: maybe an equivalent expression of the option.
        return any(math_verify_equal(gold.choices[_letter_index(x)], pred, budget) for x in gold.letters)
    if gold.yes_no is not None:
        return _yes_no(pred) == gold.yes_no
    if gold.items is not None:
        if _text_key(pred) == _text_key(gold.text):
            return True
        split = _split_list(pred)
        if split is not None:
            return _lists_match(split[0], gold, budget)
        use_math = gold.answer_type != "text"
        return use_math and math_verify_equal(gold.text, pred, budget)
    return _scalar_match(pred, gold.text, gold.number, gold.answer_type != "text", budget)


def check_gold(gold: Any, choices: Sequence[str] | None = None, answer_type: str | None = None) -> str | None:
    """Why ``gold`` cannot be scored (``None`` when it can): for data validation and for telling a
    0.0 from :func:`score_completion` apart from an unusable gold.

    Example:
        >>> check_gold("B", choices=["1", "2", "3"]), check_gold("F", answer_type="choice", choices=["x"])
        (None, 'choice answer matches no option letter or option text')
    """
    parsed = _parse_gold(gold, _normalise_choices(choices), _validate_answer_type(answer_type))
    return parsed if isinstance(parsed, str) else None


def answers_match(
    pred: str | None, gold: str, choices: Sequence[str] | None = None, answer_type: str | None = None
) -> bool:
    """Whether an extracted answer ``pred`` equals ``gold``: THE comparison of training rewards,
    trajectory filtering and evaluation (rules in the module docstring). Never raises on odd input
    (only on an unknown ``answer_type``); bounded in time; ``False`` for an unusable gold.

    Example:
        >>> answers_match("(b)", "B"), answers_match("1,500 cm", "1.5e3"), answers_match("0.5", "50%")
        (True, True, False)
        >>> answers_match("2^{1/2}", "\\\\sqrt{2}"), answers_match("blue", "B", choices=["red", "blue"])
        (True, True)
    """
    answer_type = _validate_answer_type(answer_type)
    if not isinstance(pred, str) or len(pred) > MAX_ANSWER_CHARS:
        return False
    try:
        gold_parsed = _parse_gold(gold, _normalise_choices(choices), answer_type)
        if isinstance(gold_parsed, str):
            return False
        pred = _clean(pred)
        return bool(pred) and _match(pred, gold_parsed)
    except Exception:  # a comparison must never take the trainer down
        logger.debug("answers_match failed on pred=%r gold=%r", pred[:200], str(gold)[:200], exc_info=True)
        return False


def score_completion(
    text: str, gold: str, choices: Sequence[str] | None = None, answer_type: str | None = None
) -> float:
    """1.0 when the answer extracted from a whole completion matches ``gold``, else 0.0 (also for an
    unusable gold: use :func:`check_gold` to tell those apart).

    Example:
        >>> score_completion("<think>3 red, 4 blue</think><answer>7</answer>", "7")
        1.0
    """
    pred = extract_answer(text)
    return 1.0 if pred is not None and answers_match(pred, gold, choices, answer_type) else 0.0


# --------------------------------------------------------------------------------------------------
# TRL reward functions
# --------------------------------------------------------------------------------------------------


def _row_value(values: Any, index: int) -> Any:
    """Per-row value of an optional TRL kwarg column (absent, or a list aligned with completions)."""
    if values is None or not isinstance(values, list | tuple) or index >= len(values):
        return None
    return values[index]


def _note_unparseable_gold(gold: Any, reason: str) -> None:
    with _gold_lock:
        UNPARSEABLE_GOLD_COUNTS[reason] += 1
        key = str(gold)[:200]
        first_time = key not in _warned_golds and len(_warned_golds) < _MAX_WARNED_GOLDS
        if first_time:
            _warned_golds.add(key)
    if first_time:
        logger.warning("reward: gold answer %r cannot be scored (%s); reward is None", key, reason)


def accuracy_reward(
    completions: Sequence[Any], solution: Sequence[str] | None = None, **kwargs: Any
) -> list[float | None]:
    """TRL reward: 1.0 when the completion's answer matches the row's gold ``solution``, else 0.0;
    ``None`` when the gold itself cannot be scored (counted in ``UNPARSEABLE_GOLD_COUNTS`` and logged
    once per gold). Optional per-row kwargs ``choices`` and ``answer_type`` refine the comparison;
    without ``solution`` the ``answer`` column (our problem schema's name) is used.

    Example:
        >>> accuracy_reward(["<think>..</think><answer>(B)</answer>", "<answer>4</answer>"],
        ...                 ["B", "5"], choices=[["x", "y"], None])
        [1.0, 0.0]
    """
    golds = solution if solution is not None else kwargs.get("answer")
    if golds is None:
        raise ValueError("accuracy_reward needs the gold answers: a `solution` (or `answer`) column")
    if len(golds) != len(completions):
        raise ValueError(f"accuracy_reward: {len(completions)} completions but {len(golds)} gold answers")
    rewards: list[float | None] = []
    for i, (completion, gold) in enumerate(zip(completions, golds, strict=True)):
        choices = _row_value(kwargs.get("choices"), i)
        answer_type = _row_value(kwargs.get("answer_type"), i)
        reason = check_gold(gold, choices, answer_type)
        if reason is not None:
            _note_unparseable_gold(gold, reason)
            rewards.append(None)
            continue
        rewards.append(score_completion(completion_text(completion), gold, choices, answer_type))
    return rewards


def follows_format(text: str) -> bool:
    """Exactly one ``<think>`` block then one non-empty ``<answer>`` block, nothing else around them
    but whitespace. String scans only: linear time on any input."""
    text = text.strip()
    if not (text.startswith(THINK_OPEN) and text.endswith(ANSWER_CLOSE)):
        return False
    if any(text.count(tag) != 1 for tag in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)):
        return False
    think_close = text.find(THINK_CLOSE)
    answer_open = text.find(ANSWER_OPEN)
    if answer_open < think_close or text[think_close + len(THINK_CLOSE) : answer_open].strip():
        return False
    return bool(text[answer_open + len(ANSWER_OPEN) : -len(ANSWER_CLOSE)].strip())


def format_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """TRL reward: 1.0 iff a completion is ``<think>...</think>`` then a non-empty
    ``<answer>...</answer>`` and nothing else (surrounding whitespace aside), else 0.0.

    Example:
        >>> format_reward(["<think>a</think>\\n<answer>1</answer>", "<answer>1</answer>"])
        [1.0, 0.0]
    """
    return [1.0 if follows_format(completion_text(c)) else 0.0 for c in completions]


RewardFunc = Callable[..., list]

REWARD_FUNCS: dict[str, RewardFunc] = {"accuracy": accuracy_reward, "format": format_reward}


def get_reward_funcs(names: Sequence[str]) -> list[RewardFunc]:
    """The reward functions a recipe names, in order.

    Example:
        >>> [f.__name__ for f in get_reward_funcs(["accuracy", "format"])]
        ['accuracy_reward', 'format_reward']
    """
    if isinstance(names, str):
        names = [names]
    unknown = [name for name in names if name not in REWARD_FUNCS]
    if unknown:
        raise ValueError(
            f"unknown reward function(s) {', '.join(map(repr, unknown))}; "
            f"valid names: {', '.join(REWARD_FUNCS)}"
        )
    if "accuracy" in names:
        warm_up()  # here, not inside the first reward call: that call keeps its per-sample time bound
    return [REWARD_FUNCS[name] for name in names]
