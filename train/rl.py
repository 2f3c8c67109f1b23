"""RL on a vision-language model: GRPO, TGRL, LUFFY-VL and the ablations, chosen by the recipe.

    python train/rl.py --config train/recipes/tiny/tgrl.yaml                      # CPU, tiny tier
    python train/rl.py --config train/recipes/tiny/tgrl.yaml seed=1 output_dir=checkpoints/tiny_tgrl_s1
    accelerate launch --config_file train/accelerate/zero2.yaml train/rl.py \
        --config train/recipes/7b/tgrl.yaml                          # 8 GPUs (scripts/run_tgrl_7b.sh)

GRPO is the same trainer with ``inject_mode: never`` (tgrl/trainer.py). Writes to ``output_dir``:
checkpoints (``checkpoint-N``, with optimizer and RNG state), ``metrics.jsonl`` (one line per logged
step), ``data_order.jsonl``, ``run_config.json`` (recipe, resolved config, git commit, versions) and
the final model + processor. ``resume_from_checkpoint: auto`` continues from the last checkpoint.
"""

from __future__ import annotations

import sys

from tgrl.modeling import load_policy
from tgrl.recipes import parse_recipe
from tgrl.runs import train_and_save
from tgrl.tgrl_config import RLScriptArguments
from tgrl.utils import UserError, cli, set_torch_threads


@cli
def main(argv: list[str] | None = None) -> None:
    from trl import ModelConfig, get_peft_config

    from tgrl.data import load_problems
    from tgrl.rewards import get_reward_funcs
    from tgrl.rl_data import build_rl_dataset, check_prompt_budget
    from tgrl.trainer import TGRLConfig, TGRLTrainer

    argv = sys.argv[1:] if argv is None else argv
    (script_args, training_args, model_args), merged = parse_recipe(
        (RLScriptArguments, TGRLConfig, ModelConfig), argv
    )
    set_torch_threads()

    # ------------------------------------------------------------------ data
    dataset = build_rl_dataset(script_args.train_file, limit=script_args.max_train_samples)
    n_expert = sum(bool(t) for t in dataset["expert_text"])
    print(f"[rl] {len(dataset)} prompts from {script_args.train_file}, {n_expert} with an expert trajectory")

    # ------------------------------------------------------------------ model
    model, processor = load_policy(
        model_args, script_args.min_pixels, script_args.max_pixels, script_args.freeze_vision_tower
    )
    if training_args.use_vllm and training_args.vllm_max_model_length:  # vLLM rejects longer prompts
        problems = load_problems(
            script_args.train_file, check_images=False, limit=script_args.max_train_samples
        )
        check_prompt_budget(
            problems,
            processor,
            training_args.max_completion_length,
            training_args.vllm_max_model_length,
            script_args.train_file,
        )
    try:
        trainer = TGRLTrainer(
            model,
            get_reward_funcs(script_args.reward_funcs),
            args=training_args,
            train_dataset=dataset,
            processing_class=processor,
            peft_config=get_peft_config(model_args),
        )
    except ValueError as err:  # a recipe/data mismatch the trainer detected up front (names row or key)
        raise UserError(str(err)) from None

    # ------------------------------------------------------------------ train
    train_and_save(trainer, processor, argv, merged, script_args, training_args, model_args, "rl")


if __name__ == "__main__":
    main()
