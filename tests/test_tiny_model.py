"""The tiny tier uses the stock Qwen2.5-VL classes: Auto-loadable, forward + generate on an image prompt."""

from __future__ import annotations

import torch
from PIL import Image
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
)

from tgrl.modeling import encode_prompts, generate_texts, vision_token_ids
from tgrl.prompts import build_messages
from tgrl.tiny import QWEN_SPECIAL_TOKENS, build_tiny_checkpoint


def test_auto_classes_load_standard_processor_and_model(tiny_checkpoint):
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    assert type(processor) is Qwen2_5_VLProcessor  # the stock classes the 7B checkpoint loads into
    assert processor.video_processor is not None
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint)
    assert type(model) is Qwen2_5_VLForConditionalGeneration
    n_params = sum(p.numel() for p in model.parameters())
    assert 500_000 <= n_params <= 5_000_000
    tok = processor.tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # Qwen order
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")


def test_chat_template_placeholder_expanded_by_processor(tiny_checkpoint):
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    text = processor.apply_chat_template(
        build_messages("How many red objects?"), add_generation_prompt=True, tokenize=False
    )
    assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == 1
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    batch = processor(text=[text], images=[Image.new("RGB", (56, 56), "white")], return_tensors="pt")
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    # 56x56 -> 4x4 patches of 14 px -> 2x2 merged tokens
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert int((batch["input_ids"] == pad).sum()) == 4


def test_forward_and_generate_on_image_prompt(tiny_checkpoint):
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint)
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    images = [[Image.new("RGB", (56, 56), "white")], [Image.new("RGB", (56, 56), "red")]]
    batch = encode_prompts(processor, ["How many?", "Are there more red or blue objects?"], images)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(logits).all()
    # The image changes the prediction (vision tower wired in).
    assert not torch.allclose(logits[0, -1], logits[1, -1])
    outs = generate_texts(
        model,
        processor,
        ["How many?"] * 2,
        images,
        max_new_tokens=12,
        do_sample=True,
        num_return_sequences=3,
        seed=0,
    )
    assert len(outs) == 2 and all(len(o) == 3 for o in outs)
    # Sampling with the vision tokens suppressed never emits them (the known crash of Qwen-VL rollouts).
    batch = encode_prompts(processor, ["How many?"], images[:1])
    torch.manual_seed(0)
    out = model.generate(
        **batch,
        max_new_tokens=64,
        do_sample=True,
        num_return_sequences=8,
        suppress_tokens=vision_token_ids(processor.tokenizer),
    )
    generated = out[:, batch["input_ids"].shape[1] :]
    assert not torch.isin(generated, torch.tensor(vision_token_ids(processor.tokenizer))).any()


def test_build_is_deterministic(tiny_checkpoint, tmp_path):
    build_tiny_checkpoint(tmp_path / "again", "S", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (tmp_path / "again" / name).read_bytes() == (tiny_checkpoint / name).read_bytes(), name
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "again")
    original = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint)
    for (n, a), (_, b) in zip(reloaded.state_dict().items(), original.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
