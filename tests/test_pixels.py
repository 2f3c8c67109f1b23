"""One pixel budget: images fitted into it come back unchanged from a processor
at our budget and at the checkpoint's wider default (what vLLM uses), so both count the same image
tokens; the ``size=`` form equals the deprecated min/max kwargs; every GPU-tier consumer carries the one
budget. What vLLM is sent and how its prompt is checked: tests/test_vllm_prompts.py."""

from __future__ import annotations

import os
import subprocess
import warnings

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tgrl.modeling import load_processor
from tgrl.pixels import (
    DEFAULT_BUDGET,
    PixelBudget,
    budget_of,
    fit_image,
    fit_row_images,
    fitted_size,
    image_tokens,
    patch_factor,
    pixel_fit_of,
)
from tgrl.utils import REPO_ROOT, UserError

# Qwen2.5-VL-7B-Instruct's own preprocessor_config.json bounds: what vLLM's processor uses when TRL builds
# the colocated engine with LLM(model=...) and no processor kwargs.
CHECKPOINT_DEFAULT = PixelBudget(3136, 12_845_056)
SIZES = [(100, 80), (517, 301), (2000, 1500), (3000, 400), (512, 512), (1400, 700)]  # (width, height)


def image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def ours(tiny_checkpoint):
    return load_processor(tiny_checkpoint, DEFAULT_BUDGET.min_pixels, DEFAULT_BUDGET.max_pixels)


@pytest.fixture(scope="module")
def checkpoint_default(tiny_checkpoint):
    return load_processor(tiny_checkpoint, CHECKPOINT_DEFAULT.min_pixels, CHECKPOINT_DEFAULT.max_pixels)


def process(processor, im, **kwargs):
    out = processor.image_processor(images=[im], return_tensors="pt", **kwargs)
    return out["pixel_values"], out["image_grid_thw"]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_fitted_images_come_back_unchanged_and_agree_on_tokens(size, ours, checkpoint_default):
    raw = image(*size)
    fitted = fit_image(raw, DEFAULT_BUDGET)
    assert DEFAULT_BUDGET.min_pixels <= fitted.width * fitted.height <= DEFAULT_BUDGET.max_pixels
    assert fitted.width % 28 == 0 and fitted.height % 28 == 0
    pv, grid = process(ours, fitted)
    pv_noresize, grid_noresize = process(ours, fitted, do_resize=False)
    assert torch.equal(pv, pv_noresize) and torch.equal(grid, grid_noresize)  # our processor: unchanged
    pv_wide, grid_wide = process(checkpoint_default, fitted)
    assert torch.equal(pv, pv_wide) and torch.equal(grid, grid_wide)  # vLLM's default budget: unchanged too
    assert int(grid.prod()) // 4 == image_tokens(*size, DEFAULT_BUDGET)
    assert fit_image(fitted, DEFAULT_BUDGET) is fitted


def test_raw_images_outside_the_budget_disagree_without_the_fit(ours, checkpoint_default):
    """Why the fit is needed: the same raw image gets another token count under the checkpoint default."""
    raw = image(2000, 1500)
    assert not torch.equal(process(ours, raw)[1], process(checkpoint_default, raw)[1])


def test_size_form_equals_the_deprecated_pixel_kwargs(tiny_checkpoint):
    from transformers import AutoProcessor

    raw = image(517, 301)
    plain = AutoProcessor.from_pretrained(str(tiny_checkpoint))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        old_call = process(
            plain, raw, min_pixels=DEFAULT_BUDGET.min_pixels, max_pixels=DEFAULT_BUDGET.max_pixels
        )
    new_call = process(plain, raw, size=DEFAULT_BUDGET.size())
    old_init = AutoProcessor.from_pretrained(str(tiny_checkpoint), min_pixels=262144, max_pixels=1003520)
    ours = load_processor(tiny_checkpoint, 262144, 1003520)
    for pv, grid in (new_call, process(old_init, raw), process(ours, raw)):
        assert torch.equal(pv, old_call[0]) and torch.equal(grid, old_call[1])
    assert budget_of(ours.image_processor) == DEFAULT_BUDGET and patch_factor(ours.image_processor) == 28
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # our path never uses the deprecated call kwargs
        ours(text=["<|vision_start|><|image_pad|><|vision_end|>x"], images=[raw], return_tensors="pt")


def test_one_bound_keeps_the_checkpoints_other(tiny_checkpoint):
    only_max = load_processor(tiny_checkpoint, max_pixels=12544)
    assert budget_of(only_max.image_processor) == PixelBudget(3136, 12544)  # tiny checkpoint: min 3136
    with pytest.raises(UserError, match="min_pixels <= max_pixels"):
        load_processor(tiny_checkpoint, min_pixels=20000, max_pixels=12544)


def test_fitted_size_follows_the_processor_rule():
    assert fitted_size(56, 56, PixelBudget(3136, 3136)) == (56, 56)  # the tiny tier: no change
    w, h = fitted_size(4000, 3000, DEFAULT_BUDGET)
    assert w * h <= DEFAULT_BUDGET.max_pixels and abs(w / h - 4 / 3) < 0.05


def test_rows_of_one_prompt_are_fitted_once():
    raw = image(2000, 1500)
    rows = [{"id": "p", "images": [raw]} for _ in range(4)] + [{"id": "q", "images": []}]
    fit_row_images(rows, DEFAULT_BUDGET)
    assert rows[0]["images"][0] is rows[3]["images"][0] and rows[0]["images"][0].size == fitted_size(
        2000, 1500, DEFAULT_BUDGET
    )
    assert rows[4]["images"] == []


# --------------------------------------------------------------------------------------------------
# one budget everywhere on the GPU tier (item 14)


def test_every_gpu_tier_consumer_uses_the_one_budget():
    for path in sorted((REPO_ROOT / "train" / "recipes" / "7b").glob("*.yaml")):
        recipe = yaml.safe_load(path.read_text())
        got = PixelBudget(recipe["min_pixels"], recipe["max_pixels"])
        assert got == DEFAULT_BUDGET, path.name
    suites = yaml.safe_load((REPO_ROOT / "eval" / "suites.yaml").read_text())
    for name in ("paper", "paper_avg8"):
        s = suites[name]["settings"]
        assert PixelBudget(s["min_pixels"], s["max_pixels"]) == DEFAULT_BUDGET, name
    env = {k: v for k, v in os.environ.items() if k not in ("MIN_PIXELS", "MAX_PIXELS", "TEACHER_URL")}
    dry = subprocess.run(
        ["bash", "scripts/build_teacher_7b.sh"],
        cwd=REPO_ROOT,
        env={**env, "DRY_RUN": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dry.returncode == 0, dry.stderr
    commands = [line for line in dry.stdout.splitlines() if "data_prep/" in line]
    assert len(commands) == 2  # teacher (vLLM) and filter
    for command in commands:
        assert f"--min-pixels {DEFAULT_BUDGET.min_pixels} --max-pixels {DEFAULT_BUDGET.max_pixels}" in command


def test_pixel_fit_only_for_processors_with_pixel_bounds(ours):
    from types import SimpleNamespace

    assert pixel_fit_of(ours) == (DEFAULT_BUDGET, 28)
    assert pixel_fit_of(ours.tokenizer) is None  # text-only
    other_vlm = SimpleNamespace(
        image_processor=SimpleNamespace(size={"height": 336, "width": 336}, merge_size=1)
    )
    assert pixel_fit_of(other_vlm) is None


def test_trainer_fits_rows_before_trl_sees_them(tiny_checkpoint, synthetic_dir, tmp_path, monkeypatch):
    """TGRLTrainer._generate_and_score_completions hands TRL (and so vLLM) images already in the budget."""
    from transformers import AutoModelForImageTextToText
    from trl import GRPOTrainer

    from tests.helpers import write_expert_set
    from tgrl.rewards import get_reward_funcs
    from tgrl.rl_data import build_rl_dataset
    from tgrl.trainer import TGRLConfig, TGRLTrainer

    seen = {}

    def fake_parent(self, inputs):  # stands for TRL's tokenize + generate + score
        seen["sizes"] = [row["images"][0].size for row in inputs]
        zeros = torch.zeros((len(inputs), 1), dtype=torch.long)
        return {"completion_ids": zeros, "completion_mask": zeros + 1}

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", fake_parent)
    budget = PixelBudget(3136, 12544)
    args = TGRLConfig(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], num_generations=2,
        per_device_train_batch_size=2, inject_mode="never", log_data_order=False,
    )  # fmt: skip
    trainer = TGRLTrainer(
        AutoModelForImageTextToText.from_pretrained(str(tiny_checkpoint)),
        get_reward_funcs(["format"]),
        args=args,
        train_dataset=build_rl_dataset(write_expert_set(synthetic_dir, tmp_path / "train.jsonl", limit=2)),
        processing_class=load_processor(tiny_checkpoint, budget.min_pixels, budget.max_pixels),
    )
    assert trainer._pixel_fit == (budget, 28)
    trainer.model.eval()
    trainer._generate_and_score_completions([{"id": "a", "images": [image(517, 301)]} for _ in range(2)])
    assert seen["sizes"] == [fitted_size(517, 301, budget)] * 2 != [(517, 301)] * 2
