"""Build the tiny-tier Qwen2.5-VL checkpoint from code: tokenizer, processor and model
(docs/tiny_tier.md#4-model-and-tokenizer).

Only the standard Hugging Face stack (a BPE tokenizer trained on text this repo generates, the stock
``Qwen2_5_VLProcessor``, ``Qwen2_5_VLForConditionalGeneration`` from a small config), so the saved folder
loads with the ``Auto*`` classes and no project import: the tiny and the 7B runs use identical classes.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from pathlib import Path

from tgrl.prompts import build_user_text, format_response, system_prompt
from tgrl.synthetic import COLOR_ORDER, QUESTION_TEMPLATES

# Qwen2.5-VL's special tokens, in the order (and so with the relative ids) of the real tokenizer.
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Qwen2's pre-tokenizer split (digits are single tokens, as in the real tokenizer).
QWEN_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CHAT_TEMPLATE_PATH = Path(__file__).with_name("qwen2_5_vl_chat_template.jinja")


@dataclass
class TinySize:
    """Model dimensions. ``mrope_section`` must sum to head_dim / 2 (head_dim = hidden / heads)."""

    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 256
    mrope_section: tuple[int, int, int] = (4, 6, 6)
    vision_depth: int = 2
    vision_hidden: int = 64
    vision_heads: int = 4
    vision_intermediate: int = 128
    image_px: int = 56  # min_pixels = max_pixels = image_px**2: 56 px -> 4 image tokens


SIZES = {
    "S": TinySize(),
    "M": TinySize(
        text_hidden=256,
        text_layers=4,
        text_heads=8,
        text_intermediate=512,
        mrope_section=(4, 6, 6),
        vision_depth=3,
        vision_hidden=128,
        vision_intermediate=256,
    ),
}


def tokenizer_corpus() -> list[str]:
    """Text the tokenizer is trained on: the prompt template, every question, every trace and answer form."""
    texts = [system_prompt(), "You are a helpful assistant.", "system\n", "user\n", "assistant\n"]
    for qtype, (a, b) in itertools.product(QUESTION_TEMPLATES, itertools.permutations(COLOR_ORDER, 2)):
        texts.append(build_user_text(QUESTION_TEMPLATES[qtype].format(a=a, b=b)))
    for r, b in itertools.product(range(10), range(10)):
        facts = f"red {r}, blue {b}"
        texts += [
            format_response(f"{facts}, {r}+{b}={r + b}", str(r + b)),
            format_response(f"{facts}, {max(r, b)}-{min(r, b)}={abs(r - b)}", str(abs(r - b))),
            format_response(f"{facts}, {r}{'>' if r > b else '<'}{b}", "red" if r > b else "blue"),
        ]
    texts += [
        f"<answer>{x}</answer>"
        for x in [*map(str, range(20)), "red", "blue", "yes", "no", "A", "B", "C", "D"]
    ]
    texts.append("Choices: (A) (B) (C) (D) The answer is \\boxed{} 0123456789 .,:;!?+-*/=<>()[]{}%$")
    return texts


def train_tokenizer(vocab_size: int = 512):
    """Byte-level BPE with Qwen special tokens; returns a ``PreTrainedTokenizerFast`` (left padding)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=QWEN_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_max_length=4096,
        chat_template=CHAT_TEMPLATE_PATH.read_text(),
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
        },
    )


def build_processor(tokenizer, image_px: int = 56):
    """The stock Qwen2.5-VL processor around ``tokenizer``; fixed resolution for the tiny scenes."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    pixels = image_px * image_px
    image_processor = Qwen2VLImageProcessor(
        min_pixels=pixels, max_pixels=pixels, patch_size=14, temporal_patch_size=2, merge_size=2
    )
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=tokenizer.chat_template,
    )


def build_model(tokenizer, size: TinySize, seed: int = 0):
    """A randomly initialised (seeded) ``Qwen2_5_VLForConditionalGeneration`` of the given size."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    head_dim = size.text_hidden // size.text_heads
    if sum(size.mrope_section) * 2 != head_dim:
        raise ValueError(f"mrope_section {size.mrope_section} must sum to head_dim/2 = {head_dim // 2}")
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": size.text_hidden,
            "intermediate_size": size.text_intermediate,
            "num_hidden_layers": size.text_layers,
            "num_attention_heads": size.text_heads,
            "num_key_value_heads": size.text_kv_heads,
            "max_position_embeddings": 4096,
            "max_window_layers": size.text_layers,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1e6,
                "mrope_section": list(size.mrope_section),
            },
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": size.vision_depth,
            "hidden_size": size.vision_hidden,
            "num_heads": size.vision_heads,
            "intermediate_size": size.vision_intermediate,
            "out_hidden_size": size.text_hidden,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [size.vision_depth - 1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = ids["<|endoftext|>"]
    return model


def build_tiny_checkpoint(out: str | Path, size_name: str = "S", seed: int = 0) -> dict:
    """Train the tokenizer, build processor and model, save everything as one standard HF folder."""
    if size_name not in SIZES:
        raise ValueError(f"unknown tiny size {size_name!r}; choose one of {sorted(SIZES)}")
    size = SIZES[size_name]
    tokenizer = train_tokenizer()
    processor = build_processor(tokenizer, image_px=size.image_px)
    model = build_model(tokenizer, size, seed=seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    n_vision = sum(p.numel() for p in model.model.visual.parameters())
    return {
        "size": size_name,
        "dims": asdict(size),
        "seed": seed,
        "vocab_size": len(tokenizer),
        "n_params": n_params,
        "n_params_vision": n_vision,
    }
