"""Teacher-forced token probabilities of given completions: how likely a checkpoint finds a text.

Why: the tiny experiment has to show whether the expert term moves the policy toward the expert's
*content*, not only its template. The trainer logs p of the expert's tokens during training
(``expert/p_fact`` and friends, docs/design.md#58-diagnostics), but a method without experts (GRPO, SFT) logs
nothing comparable. Here any checkpoint scores the same held-out expert trajectories in the trainer's token
layout (the project prompt, then the completion's tokens and the end-of-turn token), so "expert
content-token p" can be compared across methods and against the weak base (the start of every run).

The content tokens of a synthetic-scene trace are the digits of its stated visual facts
(:func:`tgrl.teachers.oracle.fact_spans`): the tokens the reasoning gets from the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tgrl.modeling import encode_prompts
from tgrl.teachers.oracle import fact_spans

END_OF_TURN = "<|im_end|>"


def fact_token_positions(tokenizer, text: str) -> list[int]:
    """Positions (in ``tokenizer(text)`` without special tokens) of the tokens that overlap the stated
    visual facts of ``text``; empty when the text states none."""
    spans = fact_spans(text)
    if not spans:
        return []
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return [j for j, (a, b) in enumerate(offsets) if any(a < end and start < b for start, end in spans)]


def completion_ids(tokenizer, text: str) -> list[int]:
    """The completion tokens as the trainer lays out an expert slot: the text's tokens + end-of-turn."""
    return [
        *tokenizer(text, add_special_tokens=False)["input_ids"],
        tokenizer.convert_tokens_to_ids(END_OF_TURN),
    ]


@torch.no_grad()
def completion_logps(
    model,
    processor,
    questions: Sequence[str],
    images: Sequence[Sequence],
    completions: Sequence[str],
    *,
    batch_size: int = 32,
) -> list[torch.Tensor]:
    """Per-token log-probs (one 1-D tensor per row, over :func:`completion_ids`) of ``completions``
    given (question, images) under the project prompt, by teacher forcing in batches."""
    tok = processor.tokenizer
    out: list[torch.Tensor] = []
    for start in range(0, len(questions), batch_size):
        stop = start + batch_size
        batch = encode_prompts(processor, questions[start:stop], images[start:stop])
        targets = [completion_ids(tok, text) for text in completions[start:stop]]
        width = max(len(t) for t in targets)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        target_ids = torch.tensor([t + [pad] * (width - len(t)) for t in targets])
        target_mask = torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in targets])
        input_ids = torch.cat([batch["input_ids"], target_ids], dim=1).to(model.device)
        attention = torch.cat([batch["attention_mask"], target_mask], dim=1).to(model.device)
        kwargs = {"input_ids": input_ids, "attention_mask": attention}
        for key in ("pixel_values", "image_grid_thw"):
            if key in batch:
                kwargs[key] = batch[key].to(model.device)
        # Qwen2.5-VL needs it for 3-D positions (docs/environment.md#9-qwen25-vl-inputs)
        if "mm_token_type_ids" in batch:
            zeros = torch.zeros_like(target_ids)
            kwargs["mm_token_type_ids"] = torch.cat([batch["mm_token_type_ids"], zeros], dim=1).to(
                model.device
            )
        logits = model(**kwargs).logits[:, -width - 1 : -1].float()
        logps = (
            torch.log_softmax(logits, dim=-1)
            .gather(-1, target_ids.to(model.device).unsqueeze(-1))
            .squeeze(-1)
        )
        out.extend(logps[i, : len(t)].cpu() for i, t in enumerate(targets))
    return out


@dataclass
class ContentTokenStats:
    """Teacher-forced probabilities of expert trajectories' tokens, pooled over all trajectories."""

    fact_p: float | None  # mean p over the fact tokens (None: no trajectory states facts)
    low_p: float | None  # mean p over tokens with p < 0.5 (None: there are none)
    low_share: float  # share of all tokens with p < 0.5
    mean_p: float  # mean p over all tokens (template tokens dominate it)
    n_fact_tokens: int
    n_tokens: int


def content_token_stats(tokenizer, texts: Sequence[str], logps: Sequence[torch.Tensor]) -> ContentTokenStats:
    """Pool :func:`completion_logps` output into the content-token statistics of
    docs/design.md#58-diagnostics."""
    fact, every = [], []
    for text, row in zip(texts, logps, strict=True):
        p = row.exp()
        every.append(p)
        positions = [j for j in fact_token_positions(tokenizer, text) if j < p.numel()]
        fact.append(p[positions])
    all_p = torch.cat(every) if every else torch.zeros(0)
    fact_p = torch.cat(fact) if fact else torch.zeros(0)
    low = all_p[all_p < 0.5]
    return ContentTokenStats(
        fact_p=fact_p.mean().item() if fact_p.numel() else None,
        low_p=low.mean().item() if low.numel() else None,
        low_share=(all_p < 0.5).float().mean().item() if all_p.numel() else 0.0,
        mean_p=all_p.mean().item() if all_p.numel() else 0.0,
        n_fact_tokens=int(fact_p.numel()),
        n_tokens=int(all_p.numel()),
    )
