"""Oracle teacher for synthetic scenes: visually grounded reasoning written from the scene metadata.

Traces state the visual facts in a fixed colour order, then the computation, then the answer
(``<think>red 3, blue 5, 5-3=2</think><answer>2</answer>``), the form measured to be learnable in minutes
(docs/tiny_tier.md#33-canonical-traces). The knobs ``wrong_fact_rate`` and ``long_rate`` exercise filters
F1 and F2 (docs/tiny_tier.md#2-the-task); :func:`fact_accuracy` is the grounding metric.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from tgrl.prompts import THINK_CLOSE, THINK_OPEN, format_response
from tgrl.synthetic import COLOR_ORDER, answer_for
from tgrl.teachers.base import SampleSettings, Teacher, TeacherInput, TeacherJob, TeacherSample, sample_seed
from tgrl.utils import UserError

MAX_COUNT = 9
# "red 3" / "blue 5" stated anywhere in the reasoning; bounded quantifiers keep parsing linear.
_FACT_RE = re.compile(r"\b(" + "|".join(COLOR_ORDER) + r")\s{0,3}:?\s{0,3}(\d{1,3})\b")


def computation(qtype: str, a: str, b: str, counts: dict[str, int]) -> str:
    """The arithmetic step in the question's order: ``5-3=2``, ``3+5=8`` or ``3<5``."""
    ca, cb = counts[a], counts[b]
    if qtype == "sum":
        return f"{ca}+{cb}={ca + cb}"
    if qtype == "diff":
        return f"{ca}-{cb}={ca - cb}"
    if qtype == "cmp":
        return f"{ca}{'>' if ca > cb else '<' if ca < cb else '='}{cb}"
    raise ValueError(f"unknown question type {qtype!r}")


def oracle_trace(
    meta: dict[str, Any],
    rng: random.Random | None = None,
    wrong_fact_rate: float = 0.0,
    long_rate: float = 0.0,
    long_repeats: int = 40,
) -> str:
    """One grounded trace for a synthetic scene (see module docstring for the knobs)."""
    rng = rng or random.Random(0)
    qtype = meta["qtype"]
    a, b = meta["question_colors"]
    counts = {c: int(meta["counts"][c]) for c in COLOR_ORDER}
    if wrong_fact_rate > 0 and rng.random() < wrong_fact_rate:
        color = rng.choice(COLOR_ORDER)
        counts[color] = rng.choice([n for n in range(MAX_COUNT + 1) if n != counts[color]])
    facts = ", ".join(f"{c} {counts[c]}" for c in COLOR_ORDER)
    think = f"{facts}, {computation(qtype, a, b, counts)}"
    if long_rate > 0 and rng.random() < long_rate:
        think = ", ".join([facts] * long_repeats) + ", " + computation(qtype, a, b, counts)
    if qtype == "cmp" and counts[a] == counts[b]:
        answer = "equal"  # only reachable with a wrong fact: a wrong answer, as intended
    else:
        answer = answer_for(qtype, a, b, counts)
    return format_response(think, answer)


def _first_fact_matches(text: str) -> dict[str, re.Match]:
    """The first "colour N" statement of each colour in the reasoning (positions index ``text``).

    Only the ``<think>`` part is read when present; text without one is read whole.
    """
    text = text[:20_000]
    lo, hi = 0, len(text)
    start, end = text.find(THINK_OPEN), text.find(THINK_CLOSE)
    if start != -1 and end > start:
        lo, hi = start + len(THINK_OPEN), end
    first: dict[str, re.Match] = {}
    for match in _FACT_RE.finditer(text, lo, hi):
        first.setdefault(match.group(1), match)
    return first


def stated_facts(text: str) -> dict[str, int]:
    """The per-colour counts a trace states in its reasoning (first mention of each colour wins)."""
    return {color: int(m.group(2)) for color, m in _first_fact_matches(text).items()}


def fact_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the stated counts (the digits of "red 3") that :func:`fact_accuracy` reads:
    the tokens that carry the visual content of a trace (the trainer's ``expert/p_fact`` diagnostic)."""
    return sorted(m.span(2) for m in _first_fact_matches(text).values())


def fact_accuracy(text: str, meta: dict[str, Any]) -> float | None:
    """1.0 if the trace states every colour's count and all match the scene, else 0.0.

    ``None`` when the problem carries no ground-truth counts (non-synthetic data): callers skip it.
    """
    counts = (meta or {}).get("counts")
    if not counts:
        return None
    facts = stated_facts(text)
    return float(all(facts.get(c) == int(n) for c, n in counts.items()))


# --------------------------------------------------------------------------------------------------
# The oracle as a teacher backend
# --------------------------------------------------------------------------------------------------

_REQUIRED_META = ("qtype", "question_colors", "counts")


class OracleTeacher(Teacher):
    """Teacher backend for synthetic scenes: :func:`oracle_trace` per (problem, sample).

    It reads the scene metadata only (what a perfect eye sees in the image), never the gold answer:
    :class:`~tgrl.teachers.base.TeacherInput` carries no answer at all. Each sample is seeded by
    (seed, problem id, sample index), so resumed and sharded runs write identical text.
    """

    backend = "oracle"

    @dataclass
    class Options:
        wrong_fact_rate: float = 0.0
        long_rate: float = 0.0
        long_repeats: int = 40

    def __init__(self, settings: SampleSettings, options: Options | None = None):
        super().__init__(settings, options)
        for knob in ("wrong_fact_rate", "long_rate"):
            value = getattr(self.options, knob)
            if not 0.0 <= value <= 1.0:
                raise UserError(f"oracle: {knob} must be in [0, 1], got {value}")

    @property
    def name(self) -> str:
        return "oracle"

    def trace(self, item: TeacherInput, sample_idx: int) -> TeacherSample:
        missing = [k for k in _REQUIRED_META if k not in item.meta]
        if missing:
            raise UserError(
                f"oracle teacher: problem {item.id!r} has no scene metadata {missing}. Fix: the oracle only "
                "works on synthetic scenes (data_prep/make_synthetic.py); use --backend hf/vllm/openai"
            )
        seed = sample_seed(self.settings.seed, item.id, sample_idx)
        text = oracle_trace(
            item.meta,
            random.Random(seed),
            wrong_fact_rate=self.options.wrong_fact_rate,
            long_rate=self.options.long_rate,
            long_repeats=self.options.long_repeats,
        )
        return TeacherSample(id=item.id, sample_idx=sample_idx, text=text, seed=seed, finish_reason="stop")

    def generate(self, jobs: Sequence[TeacherJob]) -> Iterator[list[TeacherSample]]:
        for job in jobs:
            yield [self.trace(job.input, idx) for idx in job.sample_indices]
