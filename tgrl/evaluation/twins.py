"""Counterfactual-twin metrics: do a model's stated facts and answers change exactly as the image did?

A twin split (tgrl.synthetic.twin_split, ``<split>_twins.jsonl``) holds each held-out scene (kind
``source``) and its twins, the question unchanged: one object removed, one recoloured (the per-colour
count ``delta`` is in ``meta.twin.change``) and a moved object (the control: counts unchanged). Pairs are
(source, twin) of the same scene, compared response by response (response j of the source with response
j of the twin; greedy: one each). Metrics, each a share of pairs (responses that state no complete facts
or no answer count as failures, so a model cannot score by saying nothing):

* ``twin_tracking``: remove and recolour pairs whose stated counts change by exactly ``delta`` for every
  colour (``_remove`` / ``_recolor``: the same per kind). Scale-free: a model that misreads a scene by one
  but tracks the edit scores, one that repeats itself or guesses does not.
* ``twin_move_invariance``: move pairs whose stated counts and answer are both unchanged.
* ``twin_answer_tracking``: remove and recolour pairs whose gold answer changes, where the model's answer
  changes as the gold did: numbers by the same difference, ``cmp`` colours both right.

Per-document records (:func:`twin_record`) go through lmms-eval as ``{"group": source id, ...}`` values;
the aggregations below pair them. ``n`` of these rows is the number of source scenes (runner.metric_n).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any

from tgrl.rewards import answers_match, extract_answer
from tgrl.synthetic import COLOR_ORDER
from tgrl.teachers.oracle import stated_facts

TRACKED_KINDS = ("remove", "recolor")
TWIN_METRICS = (
    "twin_tracking",
    "twin_tracking_remove",
    "twin_tracking_recolor",
    "twin_move_invariance",
    "twin_answer_tracking",
)


def twin_record(doc_meta: dict[str, Any], answer: str, answer_type: str, responses: list[str]) -> dict:
    """One document's twin record: its source id (``group``), kind, count delta, gold answer, and per
    response the stated counts and the extracted answer."""
    twin = doc_meta["twin"]
    return {
        "group": twin["source"],
        "kind": twin["kind"],
        "delta": (twin.get("change") or {}).get("delta"),
        "gold": answer,
        "answer_type": answer_type,
        "stated": [stated_facts(r) for r in responses],
        "pred": [extract_answer(r) for r in responses],
    }


def _complete(stated: dict[str, int]) -> bool:
    return all(c in stated for c in COLOR_ORDER)


def _as_int(text: str | None) -> int | None:
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        return None


def tracks(source: dict, twin: dict, j: int) -> bool:
    """Response j's stated counts moved by exactly the twin's delta for every colour."""
    a, b = source["stated"][j], twin["stated"][j]
    return _complete(a) and _complete(b) and all(b[c] - a[c] == twin["delta"][c] for c in COLOR_ORDER)


def invariant(source: dict, twin: dict, j: int) -> bool:
    """Response j's stated counts and answer are the same for the scene and its moved twin."""
    a, b = source["stated"][j], twin["stated"][j]
    same_facts = _complete(a) and _complete(b) and a == b
    pa, pb = source["pred"][j], twin["pred"][j]
    return same_facts and pa is not None and pb is not None and pa.strip().lower() == pb.strip().lower()


def answer_tracks(source: dict, twin: dict, j: int) -> bool:
    """Response j's answer changed as the gold did: by the same difference (numbers), or to the new
    gold colour from the old one (cmp)."""
    pa, pb = source["pred"][j], twin["pred"][j]
    if pa is None or pb is None:
        return False
    if source["answer_type"] == "number":
        na, nb, ga, gb = _as_int(pa), _as_int(pb), _as_int(source["gold"]), _as_int(twin["gold"])
        return None not in (na, nb, ga, gb) and nb - na == gb - ga
    return answers_match(pa, source["gold"]) and answers_match(pb, twin["gold"])


def pairs(items: list[dict]) -> list[tuple[dict, dict]]:
    """(source, twin) records of the same scene; twins whose source is absent (e.g. --limit) are left out."""
    by_source: dict[str, dict[str, dict]] = defaultdict(dict)
    for item in items:
        by_source[json.dumps(item["group"])][item["kind"]] = item
    return [
        (kinds["source"], twin)
        for kinds in by_source.values()
        if "source" in kinds
        for kind, twin in sorted(kinds.items())
        if kind != "source"
    ]


def _share(selected: list[tuple[dict, dict]], test) -> float:
    """Mean over response index j of the share of pairs passing ``test``; NaN without pairs (the runner
    writes no row then)."""
    if not selected:
        return math.nan
    k = min(min(len(s["stated"]), len(t["stated"])) for s, t in selected)
    per_j = [sum(bool(test(s, t, j)) for s, t in selected) / len(selected) for j in range(k)]
    return sum(per_j) / len(per_j) if per_j else math.nan


def tracking(items: list[dict], kinds: tuple[str, ...] = TRACKED_KINDS) -> float:
    return _share([(s, t) for s, t in pairs(items) if t["kind"] in kinds], tracks)


def move_invariance(items: list[dict]) -> float:
    return _share([(s, t) for s, t in pairs(items) if t["kind"] == "move"], invariant)


def answer_tracking(items: list[dict]) -> float:
    changed = [
        (s, t)
        for s, t in pairs(items)
        if t["kind"] in TRACKED_KINDS and not answers_match(s["gold"], t["gold"])
    ]
    return _share(changed, answer_tracks)


def twin_aggregate_tracking(items: list[dict]) -> float:
    return tracking(items)


def twin_aggregate_tracking_remove(items: list[dict]) -> float:
    return tracking(items, ("remove",))


def twin_aggregate_tracking_recolor(items: list[dict]) -> float:
    return tracking(items, ("recolor",))


def twin_aggregate_move_invariance(items: list[dict]) -> float:
    return move_invariance(items)


def twin_aggregate_answer_tracking(items: list[dict]) -> float:
    return answer_tracking(items)
