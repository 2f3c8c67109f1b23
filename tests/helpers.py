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


def trl_prompt(processor, images: list) -> tuple[list[int], list]:
    """The prompt ids and images TRL 1.16's ``GRPOTrainer._tokenize_prompts`` (its own code, on a stand-in
    ``self``) hands ``VLLMGeneration.generate`` for one chat prompt with ``images``."""
    from types import SimpleNamespace

    from trl import GRPOTrainer

    from tgrl.prompts import build_messages

    messages = build_messages("How many red objects?", n_images=len(images))
    parts = iter(images)
    for part in messages[1]["content"]:
        if part["type"] == "image":
            part["image"] = next(parts)
    trainer = SimpleNamespace(
        processing_class=processor,
        _is_vlm=True,
        environment_factories=None,
        tools=None,
        chat_template=None,
        chat_template_kwargs={},
    )
    ids, trl_images, _ = GRPOTrainer._tokenize_prompts(trainer, [messages])
    return list(ids[0]), trl_images


def picture(width: int, height: int, seed: int):
    """A random RGB image (PIL) of the given size."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
