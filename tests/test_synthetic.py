"""Synthetic scenes: determinism, disjoint splits, manifest counts, and answers re-derived from pixels."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tgrl.data import load_problems
from tgrl.synthetic import build_dataset, count_colors_from_pixels
from tgrl.utils import UserError


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def answer_from_question(question: str, counts: dict[str, int]) -> str:
    """Re-derive the gold answer from the question text alone (independent of the generator's code)."""
    if m := re.fullmatch(r"How many (\w+) objects plus (\w+) objects are there\?", question):
        return str(counts[m[1]] + counts[m[2]])
    if m := re.fullmatch(r"How many more (\w+) objects than (\w+) objects are there\?", question):
        return str(counts[m[1]] - counts[m[2]])
    if m := re.fullmatch(r"Are there more (\w+) or (\w+) objects\? Answer \w+ or \w+\.", question):
        return m[1] if counts[m[1]] > counts[m[2]] else m[2]
    raise AssertionError(f"unexpected question {question!r}")


def test_same_seed_gives_byte_identical_output(tmp_path):
    build_dataset(tmp_path / "a", 24, 12, seed=3)
    build_dataset(tmp_path / "b", 24, 12, seed=3)
    build_dataset(tmp_path / "c", 24, 12, seed=4)
    a, b, c = (tree_bytes(tmp_path / x) for x in "abc")
    assert a == b
    assert a["train.jsonl"] != c["train.jsonl"]


def test_answers_match_pixels_and_question_text(synthetic_dir):
    for split in ("train", "test"):
        for problem in load_problems(synthetic_dir / f"{split}.jsonl"):
            counts = count_colors_from_pixels(problem.load_images()[0])
            assert counts == problem.meta["counts"], problem.id
            assert answer_from_question(problem.question, counts) == problem.answer, problem.id
            assert (
                int(problem.answer) >= 0
                if problem.answer_type == "number"
                else problem.answer in ("red", "blue")
            )


def test_splits_are_disjoint_and_manifest_counts(synthetic_dir):
    manifest = json.loads((synthetic_dir / "manifest.json").read_text())
    keys = {}
    for split in ("train", "test"):
        problems = load_problems(synthetic_dir / f"{split}.jsonl", check_images=False)
        keys[split] = {(json.dumps(p.meta["objects"], sort_keys=True), p.question) for p in problems}
        per_type = {}
        for p in problems:
            per_type[p.meta["qtype"]] = per_type.get(p.meta["qtype"], 0) + 1
        assert manifest["counts"][split] == {"n": len(problems), "qtype": dict(sorted(per_type.items()))}
        assert (
            set(per_type) == {"sum", "diff", "cmp"} and max(per_type.values()) - min(per_type.values()) <= 1
        )
    assert not keys["train"] & keys["test"]


def test_rerun_is_noop_and_other_args_need_force(tmp_path):
    build_dataset(tmp_path, 6, 3, seed=0)
    before = tree_bytes(tmp_path)
    build_dataset(tmp_path, 6, 3, seed=0)
    assert tree_bytes(tmp_path) == before
    with pytest.raises(UserError, match="--force"):
        build_dataset(tmp_path, 6, 3, seed=1)
    build_dataset(tmp_path, 6, 3, seed=1, force=True)
    assert tree_bytes(tmp_path)["train.jsonl"] != before["train.jsonl"]


def test_cmp_never_ties_and_diff_non_negative(tmp_path):
    build_dataset(tmp_path, 300, 0, seed=9)
    for p in load_problems(tmp_path / "train.jsonl", check_images=False):
        a, b = p.meta["question_colors"]
        c = p.meta["counts"]
        if p.meta["qtype"] == "cmp":
            assert c[a] != c[b]
        if p.meta["qtype"] == "diff":
            assert c[a] >= c[b]
        assert 1 <= len(p.meta["objects"]) <= 9
