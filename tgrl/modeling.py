"""The one loader and generation path for policies, teachers and evaluation (tiny and 7B alike).

Why one place: the prompt, the image preprocessing and the vision-token guard must be identical in
teacher generation, RL rollouts and evaluation, or scores move for reasons that are not the method.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tgrl.prompts import build_messages
from tgrl.utils import UserError

# Special tokens a policy must never emit: a sampled <|image_pad|> makes the next forward fail with
# "Image features and image tokens do not match" (docs/environment.md#8-generation-pitfall).
VISION_SPECIAL_TOKENS = (
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def vision_token_ids(tokenizer) -> list[int]:
    """Ids of the vision special tokens present in ``tokenizer`` (to suppress them in generation)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    ids = [tokenizer.convert_tokens_to_ids(t) for t in VISION_SPECIAL_TOKENS]
    return sorted({i for i in ids if i is not None and i != unk and i >= 0})


def resolve_dtype(dtype: str):
    import torch

    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype == "auto":
        return "auto"
    if dtype not in table:
        raise UserError(f"unknown dtype {dtype!r}; use one of {sorted(table)} or 'auto'")
    return table[dtype]


def load_processor(path: str | Path, min_pixels: int | None = None, max_pixels: int | None = None):
    """``AutoProcessor`` with optional pixel bounds (they move scores, so callers record them; None keeps
    the checkpoint's value). The bounds are set in the forward-compatible ``size`` form (tgrl.pixels)."""
    from transformers import AutoProcessor

    from tgrl.pixels import budget_of, resolve_budget, set_budget

    processor = AutoProcessor.from_pretrained(str(path))
    if not hasattr(processor, "image_processor"):
        raise UserError(
            f"{path}: AutoProcessor returned {type(processor).__name__}, not a vision-language processor. "
            "Fix: the checkpoint needs processor_config.json (and torchvision installed for Qwen2.5-VL)"
        )
    if min_pixels is not None or max_pixels is not None:
        set_budget(processor, resolve_budget(min_pixels, max_pixels, budget_of(processor.image_processor)))
    processor.tokenizer.padding_side = "left"
    return processor


def load_model_and_processor(
    path: str | Path,
    dtype: str = "auto",
    device: str = "cpu",
    attn_implementation: str | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
):
    """Load any Qwen-VL-style checkpoint (a local folder or a hub id) with the Auto classes."""
    from transformers import AutoModelForImageTextToText

    local = Path(str(path))
    if (local.parent.exists() or str(path).startswith((".", "/"))) and not local.exists():
        raise UserError(
            f"{path}: checkpoint folder not found. Fix: build it (make tiny) or pass the right path"
        )
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if device == "auto":  # shard a model larger than one GPU over all visible GPUs (accelerate)
        model = AutoModelForImageTextToText.from_pretrained(str(path), device_map="auto", **kwargs)
    else:
        model = AutoModelForImageTextToText.from_pretrained(str(path), **kwargs).to(device)
    model.eval()
    return model, load_processor(path, min_pixels, max_pixels)


def prompt_length(
    processor, question: str, choices: Sequence[str] | None, image_sizes: Sequence[tuple[int, int]]
) -> tuple[int, list[int]]:
    """Tokens of the project prompt with its images expanded, as the processor (and a vLLM engine with the
    same pixel budget) counts them, without preprocessing any pixels: (total, image tokens per image).
    ``image_sizes`` are (width, height) before resizing."""
    from tgrl.pixels import budget_of, image_tokens, patch_factor

    text = processor.apply_chat_template(
        build_messages(question, choices, n_images=len(image_sizes)),
        add_generation_prompt=True,
        tokenize=False,
    )
    n_text = len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])  # one pad per image
    budget, factor = budget_of(processor.image_processor), patch_factor(processor.image_processor)
    per_image = [image_tokens(w, h, budget, factor) for w, h in image_sizes]
    return n_text + sum(n - 1 for n in per_image), per_image


class PromptBudget:
    """Whether the project prompt of a problem, its images expanded under the processor's pixel budget, plus
    ``reserve`` tokens fits ``max_model_len``. vLLM refuses a prompt that does not, and its whole batch with
    it: training checks its data with this before the first step (tgrl.rl_data.check_prompt_budget,
    ``reserve`` = max_completion_length), eval each prompt before vLLM (tgrl.lmms_model, ``reserve`` = 1).
    A cheap upper bound first (a token is at least one character; every image at the budget's maximum),
    the exact count (:func:`prompt_length`) only for prompts that might not fit."""

    def __init__(self, processor, max_model_len: int):
        from tgrl.pixels import budget_of, patch_factor

        self.processor, self.max_model_len = processor, int(max_model_len)
        budget = budget_of(processor.image_processor)
        self.factor = patch_factor(processor.image_processor)
        self.max_image_tokens = budget.max_pixels // (self.factor * self.factor) + 8  # + markup, generous
        template = processor.apply_chat_template(
            build_messages("", None, 0), add_generation_prompt=True, tokenize=False
        )
        self.fixed_chars = 64 + len(template)  # + option headers, separators

    def overflow(
        self, question: str, choices: Sequence[str] | None, images: Sequence, reserve: int
    ) -> tuple[int, list[int]] | None:
        """None when the prompt fits, else (prompt tokens, image tokens per image). ``images``: PIL images
        or paths (a path is opened for its size only when the cheap bound does not settle it)."""
        chars = self.fixed_chars + len(question) + sum(len(c) + 8 for c in choices or [])
        if chars + len(images) * self.max_image_tokens + reserve <= self.max_model_len:
            return None
        sizes = []
        for image in images:
            if hasattr(image, "size"):
                sizes.append(tuple(image.size))
            else:
                from PIL import Image

                with Image.open(image) as opened:
                    sizes.append(opened.size)
        n_prompt, per_image = prompt_length(self.processor, question, choices, sizes)
        return None if n_prompt + reserve <= self.max_model_len else (n_prompt, per_image)


def encode_prompts(
    processor, questions: Sequence[str], images: Sequence[Sequence], choices: Sequence | None = None
):
    """Batch-encode (question, images) pairs with the project prompt template (left padded)."""
    choices = choices if choices is not None else [None] * len(questions)
    texts = [
        processor.apply_chat_template(
            build_messages(q, c, n_images=len(ims)), add_generation_prompt=True, tokenize=False
        )
        for q, c, ims in zip(questions, choices, images, strict=True)
    ]
    flat_images = [im for ims in images for im in ims]
    return processor(text=texts, images=flat_images or None, return_tensors="pt", padding=True)


def generate_texts(
    model,
    processor,
    questions: Sequence[str],
    images: Sequence[Sequence],
    *,
    choices: Sequence | None = None,
    max_new_tokens: int = 256,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_return_sequences: int = 1,
    seed: int | None = None,
) -> list[list[str]]:
    """Generate ``num_return_sequences`` responses per prompt with the vision tokens suppressed.

    Returns one list of decoded strings (special tokens stripped) per prompt.
    """
    import torch

    batch = encode_prompts(processor, questions, images, choices).to(model.device)
    gen_kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "num_return_sequences": num_return_sequences,
        "suppress_tokens": vision_token_ids(processor.tokenizer),
        "pad_token_id": processor.tokenizer.pad_token_id,
    }
    if do_sample:
        gen_kwargs.update(temperature=temperature, top_p=top_p)
    else:
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(**batch, **gen_kwargs)
    completions = out[:, batch["input_ids"].shape[1] :]
    texts = processor.tokenizer.batch_decode(completions, skip_special_tokens=True)
    k = num_return_sequences
    return [texts[i * k : (i + 1) * k] for i in range(len(questions))]


def vision_guard(generation_kwargs: dict | None, tokenizer, use_vllm: bool) -> dict:
    """Generation kwargs that forbid every vision special token in rollouts (a sampled <|image_pad|>
    crashes the next forward, docs/environment.md#8-generation-pitfall): HF ``suppress_tokens`` ids, or
    vLLM ``bad_words`` strings (SamplingParams tokenizes them; JSON-safe for server mode). User entries are
    kept."""
    kwargs = dict(generation_kwargs or {})
    if use_vllm:
        present = [
            t for t in VISION_SPECIAL_TOKENS if tokenizer.convert_tokens_to_ids(t) != tokenizer.unk_token_id
        ]
        kwargs["bad_words"] = sorted(set(kwargs.get("bad_words") or []) | set(present))
    else:
        kwargs["suppress_tokens"] = sorted(
            set(kwargs.get("suppress_tokens") or []) | set(vision_token_ids(tokenizer))
        )
    return kwargs


def load_policy(model_args, min_pixels=None, max_pixels=None, freeze_vision_tower=False):
    """(model, processor) of ``model_args.model_name_or_path`` with the Auto classes; the vision tower
    (``visual`` / ``vision_tower`` parameters) frozen on request. No ``.to(device)``: the Trainer
    (and DeepSpeed ZeRO-3's partitioned init) places the weights."""
    from transformers import AutoModelForImageTextToText

    path = model_args.model_name_or_path
    if not path:
        raise UserError(
            "model_name_or_path is not set. Fix: add it to the recipe or pass model_name_or_path=..."
        )
    if str(path).startswith((".", "/", "checkpoints")) and not Path(path).exists():
        raise UserError(
            f"{path}: checkpoint folder not found. Fix: build it first (make tiny, or the SFT stage)"
        )
    kwargs = {"dtype": model_args.dtype or "auto", "revision": model_args.model_revision}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    processor = load_processor(path, min_pixels, max_pixels)
    if freeze_vision_tower:
        frozen = 0
        for name, param in model.named_parameters():
            if ".visual." in f".{name}" or "vision_tower" in name:
                param.requires_grad_(False)
                frozen += 1
        if not frozen:
            raise UserError(
                f"{path}: freeze_vision_tower is set but no 'visual'/'vision_tower' parameters exist"
            )
    return model, processor


def end_of_turn_id(tokenizer) -> int:
    """The token an assistant turn ends with: the tokenizer's eos token (``<|im_end|>`` for Qwen chat
    models). An expert completion ends with it, so the policy learns to stop there."""
    if tokenizer.eos_token_id is None:
        raise UserError(
            f"{type(tokenizer).__name__} has no eos token, so an expert completion has no end-of-turn. "
            "Fix: use a chat model's tokenizer (Qwen chat models end turns with <|im_end|>)"
        )
    return int(tokenizer.eos_token_id)


def response_token_ids(tokenizer, text: str) -> list[int]:
    """A response as the trainer lays out an expert slot: the text's tokens (no special tokens added), then
    :func:`end_of_turn_id`. The filter, the probes, the teacher log-prob scorer and the trainer all use it."""
    return [*tokenizer(text, add_special_tokens=False)["input_ids"], end_of_turn_id(tokenizer)]
