"""SFT of a vision-language model on expert trajectories (or on direct answers: the tiny weak base).

    python train/sft.py --config train/recipes/tiny/sft.yaml
    accelerate launch --config_file train/accelerate/zero2.yaml train/sft.py \\
        --config train/recipes/7b/sft.yaml

TRL's SFTTrainer on prompt-completion rows, the loss on the completion only; ``sft_target: expert`` trains
on exactly the trajectories RL injects (docs/design.md#6-baselines-and-ablations).
"""

from __future__ import annotations

import sys

from tgrl.modeling import load_policy
from tgrl.recipes import parse_recipe
from tgrl.runs import train_and_save
from tgrl.tgrl_config import SFTScriptArguments
from tgrl.utils import UserError, cli, set_torch_threads


@cli
def main(argv: list[str] | None = None) -> None:
    from trl import ModelConfig, SFTConfig, SFTTrainer, get_peft_config

    from tgrl.metrics import JsonlMetricsCallback, quiet_console
    from tgrl.rl_data import build_sft_dataset
    from tgrl.trl_compat import CheckpointKeyFixMixin

    class TGRLSFTTrainer(CheckpointKeyFixMixin, SFTTrainer):
        """SFTTrainer whose resume restores key-renamed VLM weights (see CheckpointKeyFixMixin)."""

    argv = sys.argv[1:] if argv is None else argv
    (script_args, training_args, model_args), merged = parse_recipe(
        (SFTScriptArguments, SFTConfig, ModelConfig), argv
    )
    if training_args.completion_only_loss is False:
        raise UserError(
            "completion_only_loss must stay true: the prompt (question and image tokens) is not a target"
        )
    set_torch_threads()

    # ------------------------------------------------------------------ data
    dataset = build_sft_dataset(
        script_args.train_file, script_args.sft_target, limit=script_args.max_train_samples
    )
    print(f"[sft] {len(dataset)} {script_args.sft_target} targets from {script_args.train_file}")

    # ------------------------------------------------------------------ model
    model, processor = load_policy(
        model_args, script_args.min_pixels, script_args.max_pixels, script_args.freeze_vision_tower
    )
    trainer = TGRLSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=get_peft_config(model_args),
        callbacks=[JsonlMetricsCallback()],
    )
    quiet_console(trainer)

    # ------------------------------------------------------------------ train
    train_and_save(trainer, processor, argv, merged, script_args, training_args, model_args, "sft")


if __name__ == "__main__":
    main()
