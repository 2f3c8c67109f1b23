"""SFT rows and TRL's VLM SFT path: the prompt (system, question, image tokens) is masked out of the loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import write_expert_set
from tgrl.data import load_problems
from tgrl.modeling import load_processor
from tgrl.rl_data import build_sft_dataset, direct_answer
from tgrl.utils import UserError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def expert_train(synthetic_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("sft") / "train.jsonl"
    return write_expert_set(synthetic_dir, path, limit=12, seed=1, without_expert=lambda i: i == 0)


def test_rows_expert_and_direct(expert_train, synthetic_dir):
    experts = build_sft_dataset(expert_train, "expert")
    assert len(experts) == 11  # the row without a trajectory is skipped
    assert experts[0]["completion"][0]["content"][0]["text"].startswith("<think>")
    problems = load_problems(synthetic_dir / "train.jsonl", limit=3)
    direct = build_sft_dataset(synthetic_dir / "train.jsonl", "direct", limit=3)
    assert [r["completion"][0]["content"][0]["text"] for r in direct] == [direct_answer(p) for p in problems]
    assert direct_answer(problems[0]) == f"<answer>{problems[0].answer}</answer>"
    with pytest.raises(UserError, match="no row has an expert trajectory"):
        build_sft_dataset(synthetic_dir / "train.jsonl", "expert")


def test_prompt_tokens_are_masked(tiny_checkpoint, expert_train, tmp_path):
    from transformers import AutoModelForImageTextToText
    from trl import SFTConfig, SFTTrainer

    processor = load_processor(tiny_checkpoint)
    dataset = build_sft_dataset(expert_train, "expert", limit=4)
    trainer = SFTTrainer(
        model=AutoModelForImageTextToText.from_pretrained(str(tiny_checkpoint)),
        args=SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], max_length=512),
        train_dataset=dataset,
        processing_class=processor,
    )
    assert trainer.completion_only_loss
    examples = [trainer.train_dataset[i] for i in range(2)]
    targets = [e["completion"][0]["content"][0]["text"] for e in examples]
    batch = trainer.data_collator(examples)
    tok = processor.tokenizer
    image_pad = tok.convert_tokens_to_ids("<|image_pad|>")
    for row, target in enumerate(targets):
        labels, ids = batch["labels"][row], batch["input_ids"][row]
        trained = labels != -100
        assert (labels[trained] == ids[trained]).all()
        text = tok.decode(ids[trained])
        assert text.startswith(target) and text.rstrip("\n").endswith("<|im_end|>")  # the turn end is learned
        assert not trained[ids == image_pad].any()  # image tokens never targets
        prompt_part = tok.decode(ids[~trained & (batch["attention_mask"][row] == 1)])
        assert (
            "<|im_start|>assistant" in prompt_part and "objects" in prompt_part and "You are" in prompt_part
        )


def _params(path):
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def test_sft_script_trains_direct_and_expert_targets(tiny_checkpoint, expert_train, synthetic_dir, tmp_path):
    from train import sft

    before = _params(tiny_checkpoint)
    for name, data in (("base_direct_sft", synthetic_dir / "train.jsonl"), ("sft", expert_train)):
        out = tmp_path / name
        sft.main(
            [
                "--config",
                str(REPO / "train/recipes/tiny" / f"{name}.yaml"),
                f"model_name_or_path={tiny_checkpoint}",
                f"train_file={data}",
                f"output_dir={out}",
                "max_steps=3",
                "save_strategy=no",
                "logging_steps=1",
            ]
        )
        after = _params(out)
        assert any(not torch.equal(before[k], after[k]) for k in before)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2, 3]
        assert all(isinstance(r["loss"], float) and r["loss"] == r["loss"] for r in rows)
        assert json.loads((out / "run_config.json").read_text())["recipe_values"]["method"] in ("base", "sft")
