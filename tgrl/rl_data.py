"""Problems (docs/design.md#4-data) -> the rows TRL's GRPOTrainer and SFTTrainer read.

An RL row carries the prompt messages, the images, the gold answer and the filtered expert trajectory;
TRL repeats it ``num_generations`` times and passes every column to the reward functions. An SFT row is
prompt + completion + images, and TRL masks the prompt out of the loss. The columns:
docs/design.md#44-training-rows.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from tgrl.data import Problem, load_problems
from tgrl.modeling import vision_token_ids
from tgrl.prompts import ANSWER_CLOSE, ANSWER_OPEN, build_messages
from tgrl.utils import UserError

if TYPE_CHECKING:
    import torch


def expert_text(problem: Problem) -> str:
    """The expert trajectory of a problem (meta.expert.text) or "" when the filter kept none."""
    expert = (problem.meta or {}).get("expert")
    if not expert:
        return ""
    if not isinstance(expert, dict) or not isinstance(expert.get("text"), str):
        raise UserError(
            f"problem {problem.id}: meta.expert must be null or an object with a 'text' string, "
            f"got {expert!r}. Fix: rebuild the training set with data_prep/build_teacher_trajectories.py"
        )
    return expert["text"]


def expert_teacher_logprobs(problem: Problem) -> list[float] | None:
    """Per-token teacher log-probs of the expert trajectory, aligned with the policy tokenization (the
    same tokenizer for Qwen teacher and policy), if the teacher pipeline stored them."""
    expert = (problem.meta or {}).get("expert") or {}
    values = expert.get("teacher_logprobs") if isinstance(expert, dict) else None
    return [float(v) for v in values] if values else None


def facts_json(problem: Problem) -> str:
    """Ground-truth visual facts for :func:`tgrl.teachers.oracle.fact_accuracy` ("" when there are none)."""
    counts = (problem.meta or {}).get("counts")
    return json.dumps({"counts": counts}, sort_keys=True) if counts else ""


def rl_row(problem: Problem) -> dict[str, Any]:
    return {
        "prompt": build_messages(problem.question, problem.choices, n_images=len(problem.image_paths)),
        "images": list(problem.image_paths),
        "solution": problem.answer,
        "choices": problem.choices,
        "answer_type": problem.answer_type,
        "id": problem.id,
        "expert_text": expert_text(problem),
        "expert_teacher_logprobs": expert_teacher_logprobs(problem),
        "facts": facts_json(problem),
    }


def direct_answer(problem: Problem) -> str:
    """The tiny tier's weak-base target: the answer alone, no reasoning (docs/tiny_tier.md#6-weak-base)."""
    return f"{ANSWER_OPEN}{problem.answer}{ANSWER_CLOSE}"


def sft_row(problem: Problem, target: str) -> dict[str, Any] | None:
    """Prompt-completion row; ``None`` for target 'expert' when the problem has no expert trajectory."""
    if target == "expert":
        text = expert_text(problem)
        if not text:
            return None
    elif target == "direct":
        text = direct_answer(problem)
    else:
        raise UserError(f"unknown SFT target {target!r}; use 'expert' or 'direct'")
    return {
        "prompt": build_messages(problem.question, problem.choices, n_images=len(problem.image_paths)),
        "completion": [{"role": "assistant", "content": [{"type": "text", "text": text}]}],
        "images": list(problem.image_paths),
        "id": problem.id,
    }


def _to_dataset(rows: list[dict[str, Any]]):
    from datasets import Dataset, Image, Sequence

    dataset = Dataset.from_list(rows)
    return dataset.cast_column("images", Sequence(Image()))


def build_rl_dataset(path: str | os.PathLike, limit: int | None = None):
    """The RL training set of a problem JSONL, as a ``datasets.Dataset`` (images decoded on access)."""
    problems = load_problems(path, limit=limit)
    return _to_dataset([rl_row(p) for p in problems])


def build_sft_dataset(path: str | os.PathLike, target: str = "expert", limit: int | None = None):
    """The SFT training set: expert trajectories (rows without one skipped) or direct answers."""
    problems = load_problems(path, limit=limit)
    rows = [r for r in (sft_row(p, target) for p in problems) if r is not None]
    if not rows:
        raise UserError(
            f"{path}: no row has an expert trajectory (meta.expert), so there is nothing to train on with "
            "sft_target 'expert'. Fix: point train_file at the filtered teacher output "
            "(data_prep/build_teacher_trajectories.py) or use sft_target 'direct'"
        )
    return _to_dataset(rows)


def check_prompt_budget(
    problems: list[Problem], processor, max_completion_length: int, max_model_len: int, source: str
) -> None:
    """Fail before training when a prompt (its images expanded under the processor's pixel budget) plus
    ``max_completion_length`` does not fit vLLM's ``max_model_len``: vLLM would reject it and the whole
    generation batch fails, again on every resume (e.g. 5 images x 1,280 tokens + 2,048 > 8,192). The
    count is :class:`tgrl.modeling.PromptBudget`'s, the one eval uses before vLLM too."""
    from tgrl.modeling import PromptBudget

    budget = PromptBudget(processor, max_model_len)
    factor = budget.factor
    too_long = []
    for row, problem in enumerate(problems, start=1):
        over = budget.overflow(problem.question, problem.choices, problem.image_paths, max_completion_length)
        if over is not None:
            too_long.append((row, problem.id, *over))
    if too_long:
        row, pid, n_prompt, per_image = too_long[0]
        raise UserError(
            f"{source}: row {row} (id {pid!r}), field 'images': {len(per_image)} image(s) = {sum(per_image)} "
            f"image tokens ({'+'.join(map(str, per_image))}); the prompt is {n_prompt} tokens, "
            f"+ max_completion_length {max_completion_length} = {n_prompt + max_completion_length} "
            f"> vllm_max_model_length {max_model_len}; "
            f"{len(too_long)} row(s) in all (ids {[t[1] for t in too_long[:10]]}). Fix: lower max_pixels (an "
            f"image is at most max_pixels/{factor * factor} tokens), raise vllm_max_model_length, or remove "
            "those rows from the training file"
        )


def check_expert_texts(dataset, tokenizer, args) -> None:
    """Before training, fail (naming a row) on expert trajectories the rollout budget of ``args`` (a
    TGRLConfig) cannot hold (filter F2 should have rejected them; see expert_overlong) or that contain a
    vision special token."""
    inject_mode, expert_overlong = args.inject_mode, args.expert_overlong
    max_completion_length = args.max_completion_length
    texts = dataset["expert_text"] if "expert_text" in dataset.column_names else []
    ids = dataset["id"] if "id" in dataset.column_names else list(range(len(texts)))
    if not any(texts):
        raise ValueError(
            f"inject_mode is {inject_mode!r} but no training row has an expert trajectory "
            "(meta.expert). Build the filtered teacher set first, or set inject_mode: never (GRPO)"
        )
    vision = set(vision_token_ids(tokenizer))
    limit = max_completion_length - 1  # the end-of-turn token is appended
    chunk = 1024  # lengths only: holding every tokenized trajectory would cost GBs at ViRL39K scale
    for start in range(0, len(texts), chunk):
        batch = [t or "" for t in texts[start : start + chunk]]
        encoded = tokenizer(batch, add_special_tokens=False)["input_ids"]
        for row_id, text, tokens in zip(ids[start : start + chunk], batch, encoded, strict=True):
            if not text:
                continue
            if len(tokens) > limit and expert_overlong == "error":
                raise ValueError(
                    f"row {row_id}: expert trajectory has {len(tokens) + 1} tokens with end-of-turn, "
                    f"more than max_completion_length={max_completion_length}. Fix: filter with the same "
                    "max length (F2), or set expert_overlong: truncate / drop"
                )
            if vision.intersection(tokens):
                raise ValueError(f"row {row_id}: expert trajectory contains a vision special token")


def stored_teacher_logps(rows: list[dict], is_expert, expert_ids, shape) -> torch.Tensor:
    """``shape`` (B, T) per-token teacher log-probs of the expert rows (``expert_teacher_logprobs`` column,
    aligned with the policy tokens ``expert_ids(text)``; the appended end-of-turn token gets 0), for
    expert_ratio 'teacher_is'. A missing or misaligned list is an error naming the row and the fix."""
    import torch

    teacher = torch.zeros(shape, dtype=torch.float32)
    for i in is_expert.nonzero().flatten().tolist():
        values = rows[i].get("expert_teacher_logprobs")
        if not values:
            raise ValueError(
                f"row {rows[i].get('id')}: expert_ratio 'teacher_is' needs meta.expert.teacher_logprobs. "
                "Fix: run data_prep/score_teacher_logprobs.py and train on its output"
            )
        n_tokens = len(expert_ids(rows[i]["expert_text"]))
        if len(values) not in (n_tokens, n_tokens - 1):  # with or without the end-of-turn token
            raise ValueError(
                f"row {rows[i].get('id')}: {len(values)} teacher log-probs for an expert of {n_tokens} "
                "policy tokens (another tokenizer, or a stale file). Fix: rerun "
                "data_prep/score_teacher_logprobs.py with this policy"
            )
        values = torch.tensor(values[: shape[1]], dtype=torch.float32)
        teacher[i, : values.numel()] = values
    return teacher.to(is_expert.device)
