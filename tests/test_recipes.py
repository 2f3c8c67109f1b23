"""Recipes: every one parses, says what it is, writes out the influential keys, and the recipes of one
table differ only in the keys that table varies; every recipe type trains on the tiny model."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import write_expert_set

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "train" / "recipes"
SFT_RECIPES = {"sft", "base_direct_sft"}
# Keys a table may vary between its rows (docs/design.md#6-baselines-and-ablations); everything else must be
# identical to tgrl.yaml.
ROW_KEYS = {
    "grpo": {"inject_mode"},
    "sft_rl": {"inject_mode", "model_name_or_path"},
    # LUFFY-VL is LUFFY's published method, not an ablation of ours: besides no token
    # reweighting it has LUFFY's advantages (no std normalisation) and no PPO clip on on-policy tokens
    # (LUFFY's train.sh). "TGRL w/o token reweighting" is tgrl_no_reweight (expert_token_weight only).
    "luffy_vl": {"expert_token_weight", "scale_rewards", "on_policy_clip"},
    "tgrl_no_reweight": {"expert_token_weight"},
    "tgrl_no_filter": {"train_file"},
    "tgrl_inject_on_fail": {"inject_mode"},
    "tgrl_adv_on_only": {"adv_group"},
    "tgrl_ratio_raw_p": {"expert_ratio"},
    "tgrl_ratio_sft": {"expert_ratio"},
    "tgrl_ratio_teacher_is": {"expert_ratio", "train_file"},
}
RUN_KEYS = {"method", "output_dir"}
INFLUENTIAL_RL = {
    "loss_type",
    "scale_rewards",
    "beta",
    "epsilon",
    "epsilon_high",
    "num_generations",
    "temperature",
    "top_p",
    "top_k",
    "max_completion_length",
    "learning_rate",
    "lr_scheduler_type",
    "seed",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "steps_per_generation",
    "num_iterations",
    "max_steps",
    "weight_decay",
    "max_grad_norm",
    "entropy_coef",
    "mask_truncated_completions",
    "inject_mode",
    "n_exp",
    "adv_group",
    "expert_ratio",
    "expert_gamma",
    "expert_token_weight",
    "p_min",
    "on_policy_clip",
    "online_group_filter",
    "reward_funcs",
}
INFLUENTIAL_SFT = {"learning_rate", "lr_scheduler_type", "seed", "per_device_train_batch_size", "max_length"}
INFLUENTIAL_SFT |= {"completion_only_loss", "weight_decay", "max_grad_norm", "sft_target"}


def all_recipes():
    return sorted(RECIPES.glob("*/*.yaml"))


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def types_for(path: Path):
    from trl import ModelConfig, SFTConfig

    from tgrl.tgrl_config import RLScriptArguments, SFTScriptArguments
    from tgrl.trainer import TGRLConfig

    if path.stem in SFT_RECIPES:
        return (SFTScriptArguments, SFTConfig, ModelConfig)
    return (RLScriptArguments, TGRLConfig, ModelConfig)


@pytest.mark.parametrize("path", all_recipes(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_parses_and_documents_itself(path):
    from tgrl.recipes import parse_recipe

    text = path.read_text()
    header = text.split("\n\n", 1)[0]
    assert header.startswith("# ") and "row" in header and "Hardware" in header
    assert "wall-clock" in header and ("Run:" in header or "Run " in header)
    gpu = ["use_cpu=true", "bf16=false"] if path.parent.name == "7b" else []
    (script, train, _), _ = parse_recipe(types_for(path), ["--config", str(path), *gpu])
    keys = set(load(path))
    missing = (INFLUENTIAL_SFT if path.stem in SFT_RECIPES else INFLUENTIAL_RL) - keys
    assert not missing, f"{path.name} inherits {sorted(missing)} from library defaults"
    assert script.method == load(path)["method"]
    assert train.report_to in ([], ["none"], "none")  # nothing pushed or reported by default


@pytest.mark.parametrize("tier", ["tiny", "7b"])
def test_rows_of_a_table_differ_only_in_their_keys(tier):
    reference = load(RECIPES / tier / "tgrl.yaml")
    for name, allowed in ROW_KEYS.items():
        other = load(RECIPES / tier / f"{name}.yaml")
        assert other.keys() == reference.keys(), name
        differing = {k for k in reference if other[k] != reference[k]}
        assert differing <= allowed | RUN_KEYS, (tier, name, differing - allowed - RUN_KEYS)
        assert differing & allowed, (tier, name, "does not change the key its row is about")


def test_luffy_vl_follows_luffy_and_the_ablation_is_its_own_run():
    for tier in ("tiny", "7b"):
        luffy = load(RECIPES / tier / "luffy_vl.yaml")
        assert (luffy["expert_token_weight"], luffy["scale_rewards"], luffy["on_policy_clip"]) == (
            "none",
            "none",
            False,
        )
        tgrl, ablation = load(RECIPES / tier / "tgrl.yaml"), load(RECIPES / tier / "tgrl_no_reweight.yaml")
        assert {k for k in tgrl if tgrl[k] != ablation[k]} - RUN_KEYS == {"expert_token_weight"}


# 7B recipes against the published consensus (docs/anchors.md#11-published-7b-recipes)
LUFFY_ROLLOUT_BATCH, LUFFY_UPDATE_BATCH, LUFFY_STEPS = 128, 64, 500  # prompts, prompts, rollout batches
REFERENCE_GPUS = 8  # the 7B recipes are written for one 8-GPU node (the launcher rescales for others)


@pytest.mark.parametrize(
    "path", [p for p in sorted((RECIPES / "7b").glob("*.yaml")) if p.stem != "sft"], ids=lambda p: p.stem
)
def test_7b_recipes_match_the_published_consensus(path):
    r = load(path)
    rollouts_per_step = r["per_device_train_batch_size"] * REFERENCE_GPUS * r["gradient_accumulation_steps"]
    rollouts_per_generation = r["per_device_train_batch_size"] * REFERENCE_GPUS * r["steps_per_generation"]
    assert rollouts_per_generation // r["num_generations"] == LUFFY_ROLLOUT_BATCH
    assert rollouts_per_step // r["num_generations"] == LUFFY_UPDATE_BATCH
    generation_batches = r["max_steps"] * r["gradient_accumulation_steps"] // r["steps_per_generation"]
    assert generation_batches == LUFFY_STEPS, (
        "max_steps counts optimizer steps, LUFFY's steps rollout batches"
    )
    assert r["epsilon"] == 0.2 and r["epsilon_high"] == 0.28  # clip-higher of LUFFY, VPPO, DAPO
    assert "OPTIMIZER steps" in path.read_text()  # the comment says which steps it counts


def test_one_wall_clock_estimate_for_the_7b_runs():
    import re

    estimates = set()
    for path in (RECIPES / "7b").glob("*.yaml"):
        if path.stem != "sft":
            header = path.read_text().split("\n\n", 1)[0].replace("\n#  ", "")
            estimates.add(tuple(re.findall(r"~(\d+-\d+) h on 8x (H100|A100)", header)))
    assert estimates == {(("8-10", "H100"), ("16-24", "A100"))}
    reproduce = (REPO / "REPRODUCE.md").read_text()
    assert "**~8-10 h**" in reproduce and "**~16-24 h**" in reproduce


def test_tiers_agree_on_method_keys():
    method_keys = set().union(*ROW_KEYS.values()) - {"model_name_or_path", "train_file"}
    method_keys |= {
        "n_exp",
        "expert_gamma",
        "p_min",
        "vis_dep_alpha",
        "on_policy_clip",
        "online_group_filter",
    }
    for name in ["tgrl", *ROW_KEYS]:
        tiny, big = load(RECIPES / "tiny" / f"{name}.yaml"), load(RECIPES / "7b" / f"{name}.yaml")
        assert {k: tiny[k] for k in method_keys} == {k: big[k] for k in method_keys}, name


# --------------------------------------------------------------------------------------------------
# every recipe type trains (2 steps, command-line entry point, tiny model)


@pytest.fixture(scope="module")
def expert_data(synthetic_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe_data") / "train.jsonl"
    return write_expert_set(synthetic_dir, path, limit=24, seed=2, without_expert=lambda i: i % 5 == 4)


@pytest.fixture(scope="module")
def weak_base(tiny_checkpoint, synthetic_dir, tmp_path_factory):
    """A few direct-answer SFT steps: the model answers <answer>N</answer>, sometimes correctly, so GRPO
    groups have reward variance (a random-init model scores 0 everywhere: zero advantages)."""
    out = tmp_path_factory.mktemp("weak_base") / "base"
    run_script(
        "sft",
        "base_direct_sft",
        f"model_name_or_path={tiny_checkpoint}",
        f"train_file={synthetic_dir / 'train.jsonl'}",
        f"output_dir={out}",
        "max_steps=60",
        "save_strategy=no",
        "logging_steps=20",
    )
    return out


def _params(path):
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def run_script(script: str, recipe: str, *overrides: str) -> None:
    module = importlib.import_module(f"train.{script}")
    module.main(["--config", str(RECIPES / "tiny" / f"{recipe}.yaml"), *overrides])


@pytest.mark.parametrize(
    "recipe",
    ["tgrl", "grpo", "luffy_vl", "tgrl_inject_on_fail", "tgrl_adv_on_only", "tgrl_ratio_sft", "sft_rl"],
)
def test_rl_recipe_trains_on_the_tiny_model(recipe, weak_base, expert_data, tmp_path):
    out = tmp_path / recipe
    run_script(
        "rl",
        recipe,
        f"model_name_or_path={weak_base}",
        f"train_file={expert_data}",
        f"output_dir={out}",
        "max_steps=2",
        "per_device_train_batch_size=16",
        "max_completion_length=32",
        "save_strategy=no",
        "vis_dep_diag_every=1",
        # the recipes' T = 0.3 on this 60-step base ties every group of 2 steps (the online filter then
        # leaves no gradient for GRPO); T = 1 gives mixed groups, so the update itself is tested
        "temperature=1.0",
    )
    before, after = _params(weak_base), _params(out)
    assert any(not torch.equal(before[k], after[k]) for k in before), "parameters did not change"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        for key in (
            "loss",
            "reward",
            "accuracy/on_policy",
            "entropy",
            "grad_norm",
            "time/step",
            "completion_length",
        ):
            assert isinstance(row.get(key), float) and math.isfinite(row[key]), (recipe, key, row.get(key))
        assert math.isfinite(row["vis_dep/on_policy"])
        if recipe not in ("grpo", "sft_rl"):
            assert "inject/rate" in row and "expert/w_mean" in row
    order = [json.loads(line) for line in (out / "data_order.jsonl").read_text().splitlines()]
    assert [o["step"] for o in order] == [0, 1] and all(len(o["ids"]) == 2 for o in order)
    assert (out / "run_config.json").exists() and (out / "processor_config.json").exists()
    # the budget the processor resized into, recorded even when the recipe leaves it to the checkpoint
    assert json.loads((out / "run_config.json").read_text())["pixel_budget"] == {
        "min_pixels": 3136,
        "max_pixels": 3136,
    }
