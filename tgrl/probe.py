"""Teacher-forced token probabilities of given completions: how likely a checkpoint finds a text.

Why: the tiny experiment has to show whether the expert term moves the policy toward the expert's
*content*, not only its template. The trainer logs p of the expert's tokens during training
(``expert/p_fact`` and friends, docs/design.md#58-diagnostics), but a method without experts (GRPO,
SFT) logs nothing comparable. Here any checkpoint scores the same held-out expert trajectories in the
trainer's token layout (the project prompt, then the completion's tokens and the end-of-turn token), so
"expert content-token p" can be compared across methods and against the weak base (the start of every run).

The same pass with the perturbed image (:class:`Perturbation`, :func:`completion_visual_dependency`) gives
the visual dependency s_t of any given text, with the trainer's perturbation and s_t definition: the
evaluation runner and the trajectory report use it (tgrl.grounding).

The content tokens of a synthetic-scene trace are the digits of its stated visual facts
(:func:`tgrl.teachers.oracle.fact_spans`): the tokens the reasoning gets from the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tgrl.modeling import encode_prompts, response_token_ids
from tgrl.perturb import perturb_with_processor
from tgrl.teachers.oracle import fact_spans
from tgrl.token_weights import visual_dependency


def fact_token_positions(tokenizer, text: str) -> list[int]:
    """Positions (in ``tokenizer(text)`` without special tokens) of the tokens that overlap the stated
    visual facts of ``text``; empty when the text states none."""
    spans = fact_spans(text)
    if not spans:
        return []
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return [j for j, (a, b) in enumerate(offsets) if any(a < end and start < b for start, end in spans)]


@dataclass(frozen=True)
class Perturbation:
    """The perturbed image I~ of docs/design.md#54-token-quantities for a teacher-forced pass: the trainer's
    ``perturb_mode`` and ``perturb_prob``, applied in patch space by :func:`tgrl.perturb.perturb_pixel_values`
    (as the trainer's token pass does). ``seed`` with a row's key fixes that row's draw, so a row's I~ does
    not depend on the batch it lands in."""

    mode: str = "patch_blackening"
    prob: float = 0.5
    seed: int = 0


def _perturb_rows(
    processor, batch, n_images: Sequence[int], perturbation: Perturbation, keys: Sequence[Sequence[int]]
) -> torch.Tensor:
    """``batch["pixel_values"]`` with each row's images perturbed by its own generator
    ``default_rng([seed, *key])``."""
    grid = batch["image_grid_thw"]
    patches = [int(t * h * w) for t, h, w in grid.tolist()]
    pieces, first_patch, first_image = [], 0, 0
    for count, key in zip(n_images, keys, strict=True):
        rows = sum(patches[first_image : first_image + count])
        pixel_values = batch["pixel_values"][first_patch : first_patch + rows]
        if count:
            pixel_values = perturb_with_processor(
                pixel_values,
                grid[first_image : first_image + count],
                processor.image_processor,
                perturbation.mode,
                perturbation.prob,
                np.random.default_rng([perturbation.seed, *key]),
            )
        pieces.append(pixel_values)
        first_patch, first_image = first_patch + rows, first_image + count
    return torch.cat(pieces) if pieces else batch["pixel_values"]


def teacher_forcing_inputs(
    processor,
    questions: Sequence[str],
    images: Sequence[Sequence],
    responses: Sequence[Sequence[int]],
    choices: Sequence | None = None,
) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """``(inputs, response_ids, mask)`` of prompts followed by given responses, in the trainer's layout:
    the prompt batch of :func:`encode_prompts` (left-padded), the response ids appended and right-padded
    (``response_ids``, ``mask``: ``(B, R)``), the attention mask zero on both paddings, and the multimodal
    token-type ids extended with zeros so the 3-D rope positions match an unpadded pass
    (docs/environment.md#9-qwen25-vl-inputs)."""
    batch = encode_prompts(processor, questions, images, choices)
    tok = processor.tokenizer
    width, pad = max(len(r) for r in responses), tok.pad_token_id or 0
    response_ids = torch.tensor([[*r, *[pad] * (width - len(r))] for r in responses])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in responses])
    inputs = dict(batch)
    inputs["input_ids"] = torch.cat([batch["input_ids"], response_ids.to(batch["input_ids"].dtype)], dim=1)
    inputs["attention_mask"] = torch.cat([batch["attention_mask"], mask.to(batch["attention_mask"].dtype)], 1)
    if "mm_token_type_ids" in batch:
        zeros = torch.zeros_like(response_ids, dtype=batch["mm_token_type_ids"].dtype)
        inputs["mm_token_type_ids"] = torch.cat([batch["mm_token_type_ids"], zeros], dim=1)
    return inputs, response_ids, mask


@torch.no_grad()
def forced_logps(model, inputs: dict, response_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``(B, R)`` log-probs of ``response_ids`` (the last ``R`` input tokens) under one forward, of the
    softmax of logits / ``temperature`` (the policy a sampler at T draws from; TRL scores it the same way).
    Only the response's logits are kept (``logits_to_keep``) and the softmax runs row by row, so a 7B model
    with a 150k vocabulary and long responses does not materialise (B, T, V) in float32."""
    width = response_ids.shape[1]
    inputs = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    logits = model(**inputs, logits_to_keep=width + 1, use_cache=False).logits[:, :-1]
    if temperature != 1.0:
        logits = logits / temperature
    targets = response_ids.to(model.device)
    rows = [
        torch.log_softmax(logits[i].float(), dim=-1).gather(-1, targets[i].unsqueeze(-1)).squeeze(-1)
        for i in range(logits.shape[0])
    ]
    return torch.stack(rows)


def response_logprobs(
    model,
    processor,
    questions: Sequence[str],
    images: Sequence[Sequence],
    choices: Sequence | None,
    responses: Sequence[Sequence[int]],
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(y_t | I, q, y_<t) of one batch of token responses: ``(logp, mask)``, both ``(B, R)``
    (zero on padding). The filter (F3, F4) and the teacher log-prob scorer use it."""
    inputs, response_ids, mask = teacher_forcing_inputs(processor, questions, images, responses, choices)
    logp = forced_logps(model, inputs, response_ids, temperature)
    mask = mask.to(logp.device)
    return logp * mask, mask


@torch.no_grad()
def _teacher_forced(
    model,
    processor,
    questions: Sequence[str],
    images: Sequence[Sequence],
    completions: Sequence[str],
    passes: Sequence[Perturbation | None],
    row_keys: Sequence[Sequence[int]] | None,
    batch_size: int,
    temperature: float = 1.0,
) -> list[list[torch.Tensor]]:
    """Per pass (None = the clean image), per row: the completion tokens' log-probs. The prompts are
    encoded once per batch for all passes."""
    tok = processor.tokenizer
    if row_keys is None:
        row_keys = [(i,) for i in range(len(questions))]
    out: list[list[torch.Tensor]] = [[] for _ in passes]
    for start in range(0, len(questions), batch_size):
        stop = start + batch_size
        targets = [response_token_ids(tok, text) for text in completions[start:stop]]
        inputs, response_ids, _ = teacher_forcing_inputs(
            processor, questions[start:stop], images[start:stop], targets
        )
        for j, perturbation in enumerate(passes):
            if "pixel_values" in inputs and perturbation is not None:
                n_images = [len(ims) for ims in images[start:stop]]
                perturbed = _perturb_rows(processor, inputs, n_images, perturbation, row_keys[start:stop])
                logps = forced_logps(model, {**inputs, "pixel_values": perturbed}, response_ids, temperature)
            else:
                logps = forced_logps(model, inputs, response_ids, temperature)
            out[j].extend(logps[i, : len(t)].cpu() for i, t in enumerate(targets))
    return out


def completion_logps(
    model,
    processor,
    questions: Sequence[str],
    images: Sequence[Sequence],
    completions: Sequence[str],
    *,
    batch_size: int = 32,
    perturbation: Perturbation | None = None,
    row_keys: Sequence[Sequence[int]] | None = None,
    temperature: float = 1.0,
) -> list[torch.Tensor]:
    """Per-token log-probs (one 1-D tensor per row, over :func:`response_token_ids`) of ``completions``
    given (question, images) under the project prompt, by teacher forcing in batches; with
    ``perturbation``, under the perturbed images (row i drawn from ``row_keys[i]``, default ``(i,)``).
    ``temperature``: the softmax of logits / T, the policy a run with rollout temperature T samples from
    and trains (TRL divides the logits the same way)."""
    return _teacher_forced(
        model, processor, questions, images, completions, [perturbation], row_keys, batch_size, temperature
    )[0]


@dataclass
class TokenDependency:
    """One completion's tokens (:func:`response_token_ids` layout) under the clean and the perturbed
    image."""

    logp: torch.Tensor  # log p(y_t | I), 1-D
    logp_perturbed: torch.Tensor  # log p(y_t | I~)
    s: torch.Tensor  # visual dependency s_t (tgrl.token_weights.visual_dependency)


def completion_visual_dependency(
    model,
    processor,
    questions: Sequence[str],
    images: Sequence[Sequence],
    completions: Sequence[str],
    perturbation: Perturbation,
    *,
    batch_size: int = 32,
    row_keys: Sequence[Sequence[int]] | None = None,
    temperature: float = 1.0,
) -> list[TokenDependency]:
    """s_t of every completion token (docs/design.md#54-token-quantities) from one clean and one perturbed
    teacher-forced pass: the trainer's perturbation and s_t definition applied to any given text (an
    evaluation response, an expert trajectory, a logged rollout). ``temperature``: both passes under
    logits / T, the trainer's s_t of a run whose rollouts sample at T (TRL divides its logits by T)."""
    clean, perturbed = _teacher_forced(
        model,
        processor,
        questions,
        images,
        completions,
        [None, perturbation],
        row_keys,
        batch_size,
        temperature,
    )
    out = []
    for a, b in zip(clean, perturbed, strict=True):
        _, s = visual_dependency(a.unsqueeze(0), b.unsqueeze(0), torch.ones(1, a.numel(), dtype=torch.bool))
        out.append(TokenDependency(a, b, s[0]))
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


@dataclass
class FactDependency:
    """Visual dependency s_t of expert trajectories' fact tokens, pooled over all trajectories."""

    fact_s: float | None  # mean s_t over the fact tokens (None: no trajectory states facts)
    fact_share: float | None  # share of fact tokens with s_t >= threshold
    n_fact_tokens: int


def fact_dependency(
    tokenizer, texts: Sequence[str], scored: Sequence[TokenDependency], threshold: float
) -> FactDependency:
    """Pool :func:`completion_visual_dependency` output over the fact tokens (:func:`fact_token_positions`):
    the tokens a grounded reasoning can only get from the image."""
    values = [
        dep.s[[j for j in fact_token_positions(tokenizer, text) if j < dep.s.numel()]]
        for text, dep in zip(texts, scored, strict=True)
    ]
    s = torch.cat(values) if values else torch.zeros(0)
    if not s.numel():
        return FactDependency(None, None, 0)
    return FactDependency(s.mean().item(), (s >= threshold).float().mean().item(), int(s.numel()))


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
