"""Trajectory filtering (docs/design.md#52-filtering): from K teacher samples per problem to at most one
expert trajectory.

F1 (correct), F2 (format and length under the policy tokenizer), F4 (visual dependency, off by default)
and F3 (log-prob under the initial policy, which selects among the survivors) are each switchable for
ablations (:class:`FilterConfig`); a safety check always rejects texts whose policy tokenization holds a
vision special token. F3 and F4 use the trainer's encoding, perturbation and s_t, so the filter judges
what the trainer will see.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tgrl.data import Problem
from tgrl.modeling import response_token_ids
from tgrl.probe import response_logprobs
from tgrl.utils import UserError

REJECT_REASONS = (
    "generation_failed",
    "vision_token",
    "incorrect",
    "truncated",
    "bad_format",
    "too_long",
    "low_visual_dependency",
    "low_logprob",
    "not_selected",
)
FILTER_STEPS = ("safety", "f1_correct", "f2_format_length", "f4_visual_dependency", "f3_logprob")


@dataclass
class FilterConfig:
    """Switches and thresholds of F1-F4 (docs/design.md#52-filtering). ``max_completion_tokens`` must equal
    the trainer's rollout ``max_completion_length``."""

    f1_correct: bool = True
    f2_format_length: bool = True
    max_completion_tokens: int = 1024
    append_eos: bool = True
    f3_logprob: bool = True
    min_mean_logprob: float | None = None
    f4_visual_dependency: bool = False
    min_visual_dependency: float = 0.0
    f4_quantile: float | None = None  # F4's threshold: this quantile of the survivors' mean s_t
    f3_random_survivor: bool = False  # F3 off: a random survivor instead of the lowest sample_idx
    perturb_mode: str = "patch_blackening"
    perturb_patch_size: int = 14
    perturb_prob: float = 0.5
    seed: int = 0
    batch_size: int = 8

    def needs_model(self) -> bool:
        return self.f3_logprob or self.f4_visual_dependency


@dataclass
class FilterResult:
    """Annotated trajectories (input order), the selected one per problem id (or None), counts."""

    trajectories: list[dict[str, Any]]
    selected: dict[str, dict[str, Any] | None]
    counts: dict[str, Any] = field(default_factory=dict)


def _batched(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _Candidate:
    """A surviving trajectory with what F3/F4 need."""

    __slots__ = ("record", "problem", "ids", "mean_logprob", "mean_visdep")

    def __init__(self, record: dict, problem: Problem, ids: list[int]):
        self.record, self.problem, self.ids = record, problem, ids
        self.mean_logprob: float | None = None
        self.mean_visdep: float | None = None


def _score_candidates(
    candidates: list[_Candidate], model, processor, config: FilterConfig, progress: Callable | None
) -> None:
    """Fill mean log-prob (and mean visual dependency when F4 is on), batched, longest first."""
    from tgrl.teachers.base import stable_int

    # Identical (problem, response) pairs have identical scores: compute each once (a programmatic
    # teacher repeats itself often; sampled teachers rarely, at no cost).
    unique: dict[tuple, _Candidate] = {}
    twins: list[tuple[_Candidate, _Candidate]] = []
    for c in candidates:
        key = (c.problem.id, tuple(c.ids))
        if key in unique:
            twins.append((c, unique[key]))
        else:
            unique[key] = c
    order = sorted(unique.values(), key=lambda c: len(c.ids), reverse=True)
    image_cache: dict[str, list] = {}

    def images_of(problem: Problem) -> list:
        if problem.id not in image_cache:
            image_cache.clear()  # candidates of one problem are usually adjacent; keep memory flat
            image_cache[problem.id] = problem.load_images()
        return image_cache[problem.id]

    for chunk in _batched(order, config.batch_size):
        questions = [c.problem.question for c in chunk]
        choices = [c.problem.choices for c in chunk]
        images = [images_of(c.problem) for c in chunk]
        responses = [c.ids for c in chunk]
        logp, mask = response_logprobs(model, processor, questions, images, choices, responses)
        means = (logp.sum(1) / mask.sum(1).clamp(min=1)).tolist()
        for c, m in zip(chunk, means, strict=True):
            c.mean_logprob = float(m)
        if config.f4_visual_dependency:
            from tgrl.perturb import perturb_image
            from tgrl.token_weights import masked_mean, visual_dependency

            perturbed = [
                [
                    perturb_image(
                        im,
                        mode=config.perturb_mode,
                        patch_size=config.perturb_patch_size,
                        prob=config.perturb_prob,
                        seed=stable_int("tgrl-f4", config.seed, c.problem.id, j),
                    )
                    for j, im in enumerate(ims)
                ]
                for c, ims in zip(chunk, images, strict=True)
            ]
            logp_perturbed, _ = response_logprobs(model, processor, questions, perturbed, choices, responses)
            _, s = visual_dependency(logp, logp_perturbed, mask)
            for c, v in zip(chunk, masked_mean(s, mask, dim=1).tolist(), strict=True):
                c.mean_visdep = float(v)
        if progress:
            progress(len(chunk))
        del logp, mask
    for twin, source in twins:
        twin.mean_logprob, twin.mean_visdep = source.mean_logprob, source.mean_visdep
        if progress:
            progress(1)


def filter_trajectories(
    problems: Sequence[Problem],
    trajectories: Sequence[dict[str, Any]],
    config: FilterConfig,
    model=None,
    processor=None,
    progress: Callable[[int], None] | None = None,
) -> FilterResult:
    """Apply F1-F4 (see module docstring). ``processor`` (the policy's) is needed for F2 and the
    safety check, ``model`` (the initial policy) for F3/F4. Trajectory ``reward`` is recomputed
    with the RL verifier, so a stale or hand-edited value never decides F1.
    """
    from tgrl.rewards import follows_format, score_completion, warm_up

    warm_up()  # math-verify's one-time cold start, before the first bounded comparison
    by_id = {p.id: p for p in problems}
    unknown = sorted({t["id"] for t in trajectories} - set(by_id))
    if unknown:
        raise UserError(
            f"{len(unknown)} trajectory id(s) are not in the problem file, e.g. {unknown[:5]}. "
            "Fix: pass the problem file the trajectories were built from"
        )
    seen: set[tuple[str, int]] = set()
    for t in trajectories:
        key = (t["id"], int(t["sample_idx"]))
        if key in seen:
            raise UserError(
                f"trajectory (id={key[0]!r}, sample_idx={key[1]}) appears twice. Fix: merge_shards.py"
            )
        seen.add(key)
    if processor is None and (config.f2_format_length or config.needs_model()):
        raise UserError("filters F2/F3/F4 need the policy's processor (pass --policy)")
    if model is None and config.needs_model():
        raise UserError("filters F3/F4 need the initial policy model (pass --policy)")

    from tgrl.modeling import vision_token_ids

    vision_ids = set(vision_token_ids(processor.tokenizer)) if processor is not None else set()
    steps = {name: Counter() for name in FILTER_STEPS}
    out: list[dict[str, Any]] = []
    survivors: dict[str, list[_Candidate]] = defaultdict(list)

    def reject(rec: dict, step: str, reason: str) -> None:
        rec["kept"], rec["reject_reason"] = False, reason
        steps[step][reason] += 1

    for t in trajectories:
        rec = dict(t)
        rec["kept"], rec["reject_reason"], rec["mean_logprob"] = False, None, None
        out.append(rec)
        problem = by_id[rec["id"]]
        text = rec.get("text")
        steps["safety"]["in"] += 1
        if not isinstance(text, str):
            reject(rec, "safety", "generation_failed")
            continue
        ids = response_token_ids(processor.tokenizer, text) if processor is not None else []
        ids = ids if config.append_eos else ids[:-1]
        rec["n_tokens"] = len(ids) if processor is not None else rec.get("n_tokens")
        if vision_ids.intersection(ids):
            reject(rec, "safety", "vision_token")
            continue
        rec["reward"] = score_completion(text, problem.answer, problem.choices, problem.answer_type)
        if config.f1_correct:
            steps["f1_correct"]["in"] += 1
            if rec["reward"] < 1.0:
                reject(rec, "f1_correct", "incorrect")
                continue
        if config.f2_format_length:
            steps["f2_format_length"]["in"] += 1
            if rec.get("finish_reason") == "length":
                reject(rec, "f2_format_length", "truncated")
                continue
            if not follows_format(text):
                reject(rec, "f2_format_length", "bad_format")
                continue
            if len(ids) > config.max_completion_tokens:
                reject(rec, "f2_format_length", "too_long")
                continue
        survivors[rec["id"]].append(_Candidate(rec, problem, ids))

    candidates = [c for group in survivors.values() for c in group]
    if config.needs_model() and candidates:
        _score_candidates(candidates, model, processor, config, progress)

    selected: dict[str, dict[str, Any] | None] = {p.id: None for p in problems}
    selection: Counter = Counter()
    f4_threshold = config.min_visual_dependency
    if config.f4_visual_dependency and config.f4_quantile is not None and candidates:
        if not 0.0 <= config.f4_quantile < 1.0:
            raise UserError(f"f4_quantile {config.f4_quantile}: must be in [0, 1)")
        values = sorted(c.mean_visdep for c in candidates)
        f4_threshold = values[math.floor(config.f4_quantile * (len(values) - 1))]  # lower nearest rank
    for pid, group in survivors.items():
        alive = []
        for c in group:
            c.record["mean_logprob"] = c.mean_logprob
            if c.mean_visdep is not None:
                c.record["mean_visual_dependency"] = c.mean_visdep
            if config.f4_visual_dependency:
                steps["f4_visual_dependency"]["in"] += 1
                if not c.mean_visdep >= f4_threshold:
                    reject(c.record, "f4_visual_dependency", "low_visual_dependency")
                    continue
            if config.f3_logprob:
                steps["f3_logprob"]["in"] += 1
                if config.min_mean_logprob is not None and not c.mean_logprob >= config.min_mean_logprob:
                    reject(c.record, "f3_logprob", "low_logprob")
                    continue
            alive.append(c)
        if not alive:
            continue
        if config.f3_logprob:
            best = max(alive, key=lambda c: (c.mean_logprob, -int(c.record["sample_idx"])))
        elif config.f3_random_survivor:
            from tgrl.teachers.base import stable_int

            by_index = sorted(alive, key=lambda c: int(c.record["sample_idx"]))
            best = by_index[stable_int("tgrl-f3-random", config.seed, pid) % len(by_index)]
        else:
            best = min(alive, key=lambda c: int(c.record["sample_idx"]))
        for c in alive:
            if c is best:
                c.record["kept"], c.record["reject_reason"] = True, None
            else:
                c.record["kept"], c.record["reject_reason"] = False, "not_selected"
        selection["candidates"] += len(alive)
        selection["selected"] += 1
        selection["not_selected"] += len(alive) - 1
        selected[pid] = best.record

    counts = _counts(problems, out, selected, steps, config)
    counts["selection"] = {
        "by": "max_mean_logprob"
        if config.f3_logprob
        else ("random_survivor" if config.f3_random_survivor else "lowest_sample_idx"),
        **selection,
    }
    if config.f4_visual_dependency:
        counts["f4_threshold"] = f4_threshold
    return FilterResult(trajectories=out, selected=selected, counts=counts)


def _counts(
    problems: Sequence[Problem],
    records: list[dict],
    selected: dict[str, dict | None],
    steps: dict[str, Counter],
    config: FilterConfig,
) -> dict[str, Any]:
    """Per-filter in/out counts for trajectories, plus per-problem outcomes and diagnostics."""
    per_step = {}
    for name in FILTER_STEPS:
        c = steps[name]
        if not c:
            continue
        rejected = {r: n for r, n in c.items() if r != "in"}
        per_step[name] = {"in": c["in"], "out": c["in"] - sum(rejected.values()), "rejected": rejected}
    have = Counter(r["id"] for r in records)
    n_with = sum(1 for p in problems if have[p.id])
    n_sel = sum(1 for v in selected.values() if v is not None)
    reasons = Counter(r["reject_reason"] for r in records if r["reject_reason"])
    kept = [r for r in records if r["kept"]]
    counts: dict[str, Any] = {
        "trajectories": {
            "in": len(records),
            "kept": len(kept),
            "reject_reasons": dict(sorted(reasons.items())),
        },
        "filters": per_step,
        "problems": {
            "in": len(problems),
            "with_trajectories": n_with,
            "without_trajectories": len(problems) - n_with,
            "with_expert": n_sel,
            "without_expert": len(problems) - n_sel,
        },
        "config": asdict(config),
    }
    if kept:
        lps = [r["mean_logprob"] for r in kept if isinstance(r.get("mean_logprob"), float)]
        if lps:
            counts["kept_mean_logprob"] = {"mean": sum(lps) / len(lps), "min": min(lps), "max": max(lps)}
        counts["kept_mean_n_tokens"] = sum(r["n_tokens"] or 0 for r in kept) / len(kept)
    by_type: dict[str, Counter] = defaultdict(Counter)
    for p in problems:
        key = str(p.meta.get("qtype", p.answer_type))
        by_type[key]["problems"] += 1
        by_type[key]["with_expert"] += selected.get(p.id) is not None
    counts["problems"]["by_type"] = {k: dict(v) for k, v in sorted(by_type.items())}
    facts = _fact_accuracy(problems, records, selected)
    if facts:
        counts["fact_accuracy"] = facts
    return counts


def _fact_accuracy(problems, records, selected) -> dict[str, float] | None:
    """Grounding diagnostic on synthetic scenes: share of traces whose stated facts match the image."""
    from tgrl.teachers.oracle import fact_accuracy

    meta = {p.id: p.meta for p in problems}
    all_scores = [fact_accuracy(r["text"], meta[r["id"]]) for r in records if isinstance(r.get("text"), str)]
    all_scores = [s for s in all_scores if s is not None]
    if not all_scores:
        return None
    kept = [fact_accuracy(r["text"], meta[r["id"]]) for r in selected.values() if r is not None]
    kept = [s for s in kept if s is not None]
    out = {"all_trajectories": sum(all_scores) / len(all_scores)}
    if kept:
        out["kept"] = sum(kept) / len(kept)
    return out


def expert_entry(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """``meta["expert"]`` of a training-set row: what the trainer needs from the selected trajectory."""
    if record is None:
        return None
    lp = record.get("mean_logprob")
    return {
        "text": record["text"],
        "teacher": record.get("teacher"),
        "sample_idx": int(record["sample_idx"]),
        "mean_logprob": lp if lp is None or math.isfinite(lp) else None,
        "n_tokens": record.get("n_tokens"),
    }
