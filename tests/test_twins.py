"""Counterfactual twins: each twin differs from its scene in exactly the stated fact (read back from the
pixels, not from the generator's bookkeeping), questions stay well posed, and the twin metrics pair
responses as defined."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.test_synthetic import answer_from_question, tree_bytes
from tgrl.data import load_problems
from tgrl.evaluation.twins import answer_tracking, move_invariance, tracking
from tgrl.synthetic import CELL_PX, COLORS, GRID, SHIFTED_COLORS, build_dataset


def cells_from_pixels(image, colors) -> dict[tuple[int, int], str]:
    """(row, col) -> colour name of every occupied cell, read from each cell's centre pixel."""
    rgb = image.convert("RGB")
    found = {}
    for row in range(GRID):
        for col in range(GRID):
            px = rgb.getpixel((col * CELL_PX + CELL_PX // 2, row * CELL_PX + CELL_PX // 2))
            for name, ref in colors.items():
                if sum(abs(p - r) for p, r in zip(px, ref, strict=True)) < 60:
                    found[(row, col)] = name
    return found


def color_counts(cells: dict[tuple[int, int], str]) -> dict[str, int]:
    return {c: sum(v == c for v in cells.values()) for c in COLORS}


@pytest.fixture(scope="module")
def twin_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("twins")
    build_dataset(out, 30, 45, seed=0, n_val=6, n_shifted=9, twins=True)
    return out


def test_each_twin_changes_exactly_its_fact_and_stays_well_posed(twin_dir):
    kinds_seen = set()
    for split, colors in (("test", COLORS), ("val", COLORS), ("shifted", SHIFTED_COLORS)):
        problems = load_problems(twin_dir / f"{split}_twins.jsonl")
        sources = {p.id: p for p in problems if p.meta["twin"]["kind"] == "source"}
        assert len(sources) == len(load_problems(twin_dir / f"{split}.jsonl", check_images=False))
        for p in problems:
            cells = cells_from_pixels(p.load_images()[0], colors)
            counts = color_counts(cells)
            # well posed: the gold answer follows from the image and the unchanged question text
            assert counts == p.meta["counts"], p.id
            assert sum(counts.values()) >= 1, p.id
            assert answer_from_question(p.question, counts) == p.answer, p.id
            if p.meta["qtype"] == "diff":
                assert int(p.answer) >= 0, p.id
            a, b = p.meta["question_colors"]
            if p.meta["qtype"] == "cmp":
                assert counts[a] != counts[b], p.id
            kind = p.meta["twin"]["kind"]
            if kind == "source":
                continue
            kinds_seen.add(kind)
            source = sources[p.meta["twin"]["source"]]
            assert p.question == source.question, p.id
            before = cells_from_pixels(source.load_images()[0], colors)
            changed = {cell for cell in set(before) | set(cells) if before.get(cell) != cells.get(cell)}
            delta = {c: counts[c] - color_counts(before)[c] for c in COLORS}
            assert delta == p.meta["twin"]["change"]["delta"], p.id
            if kind == "remove":  # one object gone, nothing else touched
                assert len(changed) == 1 and next(iter(changed)) not in cells, p.id
                assert sorted(delta.values()) == [-1, 0], p.id
            elif kind == "recolor":  # one object changed colour in place
                (cell,) = changed
                assert cell in before and cell in cells and before[cell] != cells[cell], p.id
                assert sorted(delta.values()) == [-1, 1], p.id
            else:  # move: one cell emptied, one filled with the same colour, counts unchanged
                assert len(changed) == 2, p.id
                gone = [c for c in changed if c not in cells]
                new = [c for c in changed if c not in before]
                assert len(gone) == 1 and len(new) == 1 and before[gone[0]] == cells[new[0]], p.id
                assert delta == {c: 0 for c in COLORS}, p.id
    assert kinds_seen == {"remove", "recolor", "move"}


def test_twins_are_no_item_of_another_split(twin_dir):
    def keys(file: str) -> set:
        problems = load_problems(twin_dir / file, check_images=False)
        return {
            (json.dumps(p.meta["objects"], sort_keys=True), p.question)
            for p in problems
            if p.meta.get("twin", {}).get("kind", "") != "source"
        }

    base = set().union(*(keys(f"{s}.jsonl") for s in ("train", "val", "test", "shifted")))
    for split in ("val", "test", "shifted"):
        assert keys(f"{split}_twins.jsonl"), split
        assert not keys(f"{split}_twins.jsonl") & base, split


def test_adding_twins_leaves_the_dataset_byte_identical(tmp_path):
    build_dataset(tmp_path / "plain", 12, 9, seed=2, n_val=3)
    before = tree_bytes(tmp_path / "plain")
    build_dataset(tmp_path / "plain", 12, 9, seed=2, n_val=3, twins=True)  # added in place, no --force
    after = tree_bytes(tmp_path / "plain")
    assert {k: v for k, v in after.items() if k in before and k != "manifest.json"} == {
        k: v for k, v in before.items() if k != "manifest.json"
    }
    assert "test_twins.jsonl" in after and "val_twins.jsonl" in after
    build_dataset(tmp_path / "fresh", 12, 9, seed=2, n_val=3, twins=True)
    assert tree_bytes(tmp_path / "fresh") == after


# --- the metrics on hand-made records ---------------------------------------------------------------


def rec(group, kind, stated, pred, gold, delta=None, answer_type="number"):
    return {
        "group": group,
        "kind": kind,
        "delta": delta,
        "gold": gold,
        "answer_type": answer_type,
        "stated": [stated],
        "pred": [pred],
    }


def test_tracking_counts_exact_deltas_only():
    items = [
        rec("s1", "source", {"red": 3, "blue": 1}, "4", "4"),
        # removed a red object: stated red drops by one, blue stays -> tracks
        rec("s1", "remove", {"red": 2, "blue": 1}, "3", "3", {"red": -1, "blue": 0}),
        # recoloured red -> blue, but the model kept its counts -> does not track
        rec("s1", "recolor", {"red": 3, "blue": 1}, "4", "4", {"red": -1, "blue": 1}),
        rec("s2", "source", {"red": 5, "blue": 2}, "7", "6"),
        # wrong in both, but off by the same amount: tracks (scale-free)
        rec("s2", "remove", {"red": 5, "blue": 1}, "6", "5", {"red": 0, "blue": -1}),
        # no complete facts: a failure, not a skip
        rec("s2", "recolor", {"red": 4}, "7", "6", {"red": -1, "blue": 1}),
        rec("s3", "remove", {"red": 1, "blue": 1}, "2", "2", {"red": -1, "blue": 0}),  # no source: left out
    ]
    assert tracking(items) == pytest.approx(2 / 4)
    assert tracking(items, ("remove",)) == pytest.approx(1.0)
    assert tracking(items, ("recolor",)) == pytest.approx(0.0)


def test_move_invariance_needs_same_facts_and_answer():
    items = [
        rec("a", "source", {"red": 2, "blue": 1}, "3", "3"),
        rec("a", "move", {"red": 2, "blue": 1}, "3", "3", {"red": 0, "blue": 0}),
        rec("b", "source", {"red": 2, "blue": 1}, "3", "3"),
        rec("b", "move", {"red": 2, "blue": 1}, "4", "3", {"red": 0, "blue": 0}),
        rec("c", "source", {"red": 2, "blue": 1}, "3", "3"),
        rec("c", "move", {"red": 1, "blue": 1}, "3", "3", {"red": 0, "blue": 0}),
    ]
    assert move_invariance(items) == pytest.approx(1 / 3)
    assert math.isnan(move_invariance(items[:1]))  # nothing to score: NaN, the runner writes no row


def test_answer_tracking_only_where_gold_changes():
    items = [
        rec("a", "source", {}, "5", "4"),
        rec("a", "remove", {}, "4", "3", {"red": -1, "blue": 0}),  # off by one in both: moves like gold
        rec("a", "recolor", {}, "5", "4", {"red": -1, "blue": 1}),  # sum: gold unchanged, not scored
        rec("b", "source", {}, "red", "red", answer_type="text"),
        rec("b", "recolor", {}, "red", "blue", {"red": -1, "blue": 1}, answer_type="text"),  # missed flip
        rec("c", "source", {}, "red", "red", answer_type="text"),
        rec("c", "remove", {}, "blue", "blue", {"red": -1, "blue": 0}, answer_type="text"),  # right flip
    ]
    assert answer_tracking(items) == pytest.approx(2 / 3)
