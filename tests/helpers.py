"""Test data builders shared by several test modules (fixtures stay in conftest.py)."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path


def write_expert_set(
    synthetic_dir: Path,
    path: Path,
    limit: int,
    seed: int = 0,
    without_expert: Callable[[int], bool] = lambda i: False,
) -> Path:
    """A training set in the shape filter_trajectories.py writes: the first ``limit`` synthetic train
    problems with an oracle trace in ``meta.expert`` (absolute image paths, so the file can live
    anywhere); rows ``i`` with ``without_expert(i)`` get none (they train as plain GRPO groups)."""
    from tgrl.data import load_problems
    from tgrl.teachers.oracle import oracle_trace
    from tgrl.utils import write_jsonl

    rng = random.Random(seed)
    rows = []
    for i, problem in enumerate(load_problems(synthetic_dir / "train.jsonl", limit=limit)):
        record = problem.to_record()
        record["images"] = problem.image_paths
        record["meta"]["expert"] = (
            None if without_expert(i) else {"text": oracle_trace(problem.meta, rng), "teacher": "oracle"}
        )
        rows.append(record)
    write_jsonl(path, rows)
    return path
