"""Visual dependency of a model's own reasoning: which tokens of a given text lean on the image.

The paper's claim is about where the reasoning gets its facts, but the trainer measures s_t only on its
rollouts and expert slots, and fact accuracy needs scenes with ground truth. This module measures s_t on
any text a checkpoint wrote or is shown, with the trainer's pieces (:mod:`tgrl.probe`, :mod:`tgrl.perturb`,
:func:`tgrl.token_weights.visual_dependency`): two forwards per text, no sampling. Regions, per-task
means and the :data:`HIGH_S` threshold: docs/metrics.md#at-evaluation-time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tgrl.prompts import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN

HIGH_S = math.log(2) - 0.5  # s_t at d = -ln 2: the token's probability halves without the image
METRIC_PREFIX = "vis_dep_"
# per-response summary key -> task metric name (the summary rows' ``metric``)
SUMMARY_METRICS = {
    "reasoning": "vis_dep_reasoning",
    "answer": "vis_dep_answer",
    "reasoning_share": "vis_dep_reasoning_share",
}


@dataclass(frozen=True)
class GroundingSpec:
    """Everything that moves the grounding numbers; recorded (and hashed) in the evaluation settings."""

    perturb_mode: str = "patch_blackening"
    perturb_prob: float = 0.5
    threshold: float = HIGH_S

    def settings(self) -> dict[str, Any]:
        return {**asdict(self), "s_t": "tgrl.token_weights.visual_dependency", "pass": "tgrl.probe"}

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> GroundingSpec:
        return cls(settings["perturb_mode"], float(settings["perturb_prob"]), float(settings["threshold"]))


def regions(text: str) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """Character spans (start, end) of the reasoning and the answer inside their tags (None: absent).

    Example:
        >>> regions("<think>red 3</think><answer>3</answer>")
        ((7, 12), (28, 29))
        >>> regions("no tags")
        (None, None)
    """
    reasoning = answer = None
    t_open = text.find(THINK_OPEN)
    if t_open != -1:
        start = t_open + len(THINK_OPEN)
        close = text.find(THINK_CLOSE, start)
        if close == -1:
            close = text.find(ANSWER_OPEN, start)
        reasoning = (start, close if close != -1 else len(text))
    # the answer the reward reads (tgrl.rewards.extract_answer): the last complete <answer> block, else
    # an unclosed last one
    a_close = text.rfind(ANSWER_CLOSE)
    a_open = text.rfind(ANSWER_OPEN, 0, a_close) if a_close != -1 else -1
    if a_open != -1:
        answer = (a_open + len(ANSWER_OPEN), a_close)
    elif (a_open := text.rfind(ANSWER_OPEN)) != -1:
        answer = (a_open + len(ANSWER_OPEN), len(text))
    return reasoning, answer


def token_ends(tokenizer, text: str) -> list[int]:
    """The end character of each completion token (the :func:`tgrl.probe.completion_ids` layout: the
    text's tokens, then the end-of-turn token, which ends at ``len(text)``). Non-decreasing, so token i
    is ``text[ends[i-1]:ends[i]]`` (a byte-level piece of a multi-byte character may be empty)."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    ends, last = [], 0
    for _, end in offsets:
        last = max(last, int(end))
        ends.append(last)
    return [*ends, len(text)]


def token_regions(text: str, ends: Sequence[int]) -> list[str]:
    """Per token: ``"reasoning"``, ``"answer"`` or ``""`` (tags, text outside them, end of turn)."""
    reasoning, answer = regions(text)
    out, start = [], 0
    for end in ends:
        label = ""
        for name, span in (("reasoning", reasoning), ("answer", answer)):
            if span and start < span[1] and span[0] < end:
                label = name
                break
        out.append(label)
        start = end
    return out


def summarize(
    text: str, ends: Sequence[int], s: Sequence[float], threshold: float = HIGH_S
) -> dict[str, Any]:
    """One response's grounding: mean s_t of its reasoning and answer tokens (None when it has none),
    the share of reasoning tokens with s_t >= ``threshold``, and the token counts."""
    if len(ends) != len(s):
        raise ValueError(f"{len(ends)} token ends but {len(s)} s_t values")
    labels = token_regions(text, ends)
    reasoning = [v for v, r in zip(s, labels, strict=True) if r == "reasoning"]
    answer = [v for v, r in zip(s, labels, strict=True) if r == "answer"]
    return {
        "reasoning": sum(reasoning) / len(reasoning) if reasoning else None,
        "answer": sum(answer) / len(answer) if answer else None,
        "reasoning_share": sum(v >= threshold for v in reasoning) / len(reasoning) if reasoning else None,
        "n_reasoning": len(reasoning),
        "n_answer": len(answer),
    }


def score_texts(
    model,
    processor,
    questions: Sequence[str],
    images: Sequence[Sequence],
    texts: Sequence[str],
    spec: GroundingSpec,
    seed: int,
    *,
    row_keys: Sequence[Sequence[int]] | None = None,
    batch_size: int = 32,
    keep_logp: bool = False,
) -> list[dict[str, Any]]:
    """Per text: ``token_ends``, ``s`` (rounded to 4 decimals) and the :func:`summarize` fields (from the
    unrounded values); ``logp`` (clean log-probs) too with ``keep_logp``. Row i's perturbed image is
    drawn from ``[seed, *row_keys[i]]`` (default ``(i,)``), independent of the batch size."""
    from tgrl.probe import Perturbation, completion_visual_dependency

    perturbation = Perturbation(spec.perturb_mode, spec.perturb_prob, int(seed))
    scored = completion_visual_dependency(
        model, processor, questions, images, texts, perturbation, batch_size=batch_size, row_keys=row_keys
    )
    out = []
    for text, dep in zip(texts, scored, strict=True):
        ends = token_ends(processor.tokenizer, text)
        if len(ends) != dep.s.numel():
            raise RuntimeError(f"tokenizer offsets ({len(ends)}) and scored tokens ({dep.s.numel()}) differ")
        s = dep.s.tolist()
        record = {
            "token_ends": ends,
            "s": [round(v, 4) for v in s],
            **summarize(text, ends, s, spec.threshold),
        }
        if keep_logp:
            record["logp"] = [round(v, 4) for v in dep.logp.tolist()]
        out.append(record)
    return out


def task_metrics(items: Sequence[tuple[dict[str, Any], bool | None]]) -> dict[str, tuple[float, int]]:
    """Per-task grounding from (response summary, correct or None) pairs: metric -> (mean, responses).

    For each summary field (:data:`SUMMARY_METRICS`) the mean over responses that have it, then the same
    over correct and over incorrect responses (``_correct`` / ``_incorrect``; responses whose
    correctness is unknown count only in the overall mean). Metrics without any response are left out.
    """
    out: dict[str, tuple[float, int]] = {}
    for field, metric in SUMMARY_METRICS.items():
        for suffix, keep in (
            ("", lambda c: True),
            ("_correct", lambda c: c is True),
            ("_incorrect", lambda c: c is False),
        ):
            values = [
                summary[field]
                for summary, correct in items
                if summary.get(field) is not None and keep(correct)
            ]
            if values:
                out[metric + suffix] = (sum(values) / len(values), len(values))
    return out
