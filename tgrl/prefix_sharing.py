"""Prefix sharing in the update: each distinct prompt of a batch goes through the model once, and its keys and
values serve every completion of its group.

A GRPO batch holds G completions per prompt (8 at the tiny tier: 7 rollouts + 1 expert). TRL's
``_get_per_token_logps_and_entropies`` forwards prompt + completion on every row, so each prompt (its image
tokens included) is computed, and back-propagated, G times. Here it is computed once: the same function of
the weights, summed in another floating-point order (log-probs agree to ~1e-6 in float32; tests and
benchmarks/bench_prefix_sharing.py). Positions are the model's own (``compute_3d_position_ids`` over the full
rows, as TRL's forward computes them), and the completion pass goes through TRL's fused LM head, so the
temperature scaling and the entropy are TRL's.

Scope: Qwen2-VL / Qwen2.5-VL called directly (one process, no DeepSpeed or DDP wrapper, no PEFT), without
gradient checkpointing (it turns the KV cache off). Elsewhere ``share_prompt_prefix_blocker`` names the
reason and the trainer keeps TRL's per-row forward. Switch: TGRLConfig.share_prompt_prefix.
"""

from __future__ import annotations

import torch
from trl.trainer.utils import split_pixel_values_by_grid

SUPPORTED_MODELS = ("Qwen2_5_VLForConditionalGeneration", "Qwen2VLForConditionalGeneration")


def share_prompt_prefix_blocker(model) -> str | None:
    """Why prefix sharing cannot run on ``model`` as the trainer hands it over (None: it can)."""
    name = type(model).__name__
    if name not in SUPPORTED_MODELS:
        return f"{name} is not one of {SUPPORTED_MODELS} called directly (a DDP, DeepSpeed or PEFT wrapper?)"
    if getattr(model, "is_gradient_checkpointing", False):
        return "gradient checkpointing is on (it turns the KV cache off)"
    if not hasattr(model.base_model, "compute_3d_position_ids"):
        return "this transformers version has no compute_3d_position_ids (positions of the full rows)"
    return None


def _row_pixels(
    pixel_values: torch.Tensor | None,
    image_grid_thw: torch.Tensor | None,
    num_images: list[int] | None,
    rows: int,
) -> tuple[list[torch.Tensor], list[torch.Tensor]] | tuple[None, None]:
    """Each row's pixel patches and image grids, split as TRL splits them (one image per row by default)."""
    if pixel_values is None:
        return None, None
    batch = {"pixel_values": pixel_values, "image_grid_thw": image_grid_thw}
    split = split_pixel_values_by_grid({**batch, "num_images": num_images or [1] * rows})
    return split["pixel_values"], split["image_grid_thw"]


def prompt_groups(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    pixels: list[torch.Tensor] | None = None,
    grids: list[torch.Tensor] | None = None,
    mm_token_type_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows with byte-identical prompts (ids, mask, token types, image patches and grids): ``first`` (U,), the
    first row of each distinct prompt, and ``inverse`` (B,), each row's distinct prompt."""
    seen: dict[tuple, int] = {}
    first: list[int] = []
    inverse: list[int] = []
    for row in range(prompt_ids.size(0)):
        key = (
            prompt_ids[row].cpu().numpy().tobytes(),
            prompt_mask[row].cpu().numpy().tobytes(),
            None if mm_token_type_ids is None else mm_token_type_ids[row].cpu().numpy().tobytes(),
            None if pixels is None else pixels[row].detach().cpu().numpy().tobytes(),
            None if grids is None else grids[row].cpu().numpy().tobytes(),
        )
        if key not in seen:
            seen[key] = len(first)
            first.append(row)
        inverse.append(seen[key])
    device = prompt_ids.device
    return torch.tensor(first, device=device), torch.tensor(inverse, device=device)


def shared_prefix_logps_and_entropies(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: int,
    compute_entropy: bool = False,
    pixel_values: torch.Tensor | None = None,
    image_grid_thw: torch.Tensor | None = None,
    num_images: list[int] | None = None,
    mm_token_type_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """Per-token log-probs (and entropies) of the last ``logits_to_keep`` tokens of each row, as TRL's
    ``_get_per_token_logps_and_entropies`` returns them, with each distinct prompt forwarded once.

    ``model`` carries TRL's fused LM head (GRPOTrainer adds it). Returns None where no two rows share a
    prompt, or where the prompts are not left-padded (the caller then runs TRL's per-row forward).

    1. positions of the full rows, from the model (mrope with images; else its own ``arange``);
    2. prompt pass: each distinct prompt but its last token, once, with the KV cache;
    3. the cache repeated over each prompt's rows;
    4. completion pass: the prompt's last token + the completion on that cache, through the fused head,
       which scores every completion token (the first from the prompt's last position)."""
    prompt_len = input_ids.size(1) - logits_to_keep
    prompt_ids, prompt_mask = input_ids[:, :prompt_len], attention_mask[:, :prompt_len]
    if prompt_len < 2 or not bool(prompt_mask[:, -1].all()):
        return None
    pixels, grids = _row_pixels(pixel_values, image_grid_thw, num_images, input_ids.size(0))
    prompt_mm = None if mm_token_type_ids is None else mm_token_type_ids[:, :prompt_len]
    first, inverse = prompt_groups(prompt_ids, prompt_mask, pixels, grids, prompt_mm)
    if len(first) == input_ids.size(0):
        return None

    backbone = model.base_model
    positions = backbone.compute_3d_position_ids(
        input_ids=input_ids,
        image_grid_thw=image_grid_thw,
        video_grid_thw=None,
        inputs_embeds=None,
        attention_mask=attention_mask,
        past_key_values=None,
        mm_token_type_ids=mm_token_type_ids,
    )
    head = prompt_len - 1  # the prompt pass stops before the prompt's last token
    prefix_inputs = {
        "input_ids": prompt_ids[first, :head],
        "attention_mask": prompt_mask[first, :head],
        "use_cache": True,
    }
    if positions is not None:
        prefix_inputs["position_ids"] = positions[:, first, :head]
    if pixels is not None:
        prefix_inputs["pixel_values"] = torch.cat([pixels[i] for i in first.tolist()])
        prefix_inputs["image_grid_thw"] = torch.cat([grids[i] for i in first.tolist()])
    if prompt_mm is not None:
        prefix_inputs["mm_token_type_ids"] = prompt_mm[first, :head]
    cache = backbone(**prefix_inputs).past_key_values
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(0, inverse)
        layer.values = layer.values.index_select(0, inverse)

    tail_ids = input_ids[:, head:]  # the prompt's last token, then the completion
    labels = tail_ids.masked_fill(attention_mask[:, head:] == 0, -100)
    labels[:, 0] = -100
    tail_inputs = {
        "input_ids": tail_ids,
        "attention_mask": attention_mask,
        "past_key_values": cache,
        "labels": labels,
        "fused_lm_head": True,
    }
    if positions is None:  # the model's own text positions: arange over the full row, padding included
        tail_positions = torch.arange(head, input_ids.size(1), device=input_ids.device)
        tail_inputs["position_ids"] = tail_positions.view(1, 1, -1).expand(3, input_ids.size(0), -1)
    else:
        tail_inputs["position_ids"] = positions[..., head:]
    outputs = model(**tail_inputs)
    logps = outputs.log_probs[:, -logits_to_keep:]
    entropies = outputs.entropy[:, -logits_to_keep:] if compute_entropy else None
    return logps, entropies
