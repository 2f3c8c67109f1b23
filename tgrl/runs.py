"""What train/rl.py and train/sft.py do around their trainer: the run record (recipe, resolved fields,
provenance, pixel budget), resume, train, save."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

from tgrl.recipes import split_config_arg
from tgrl.utils import UserError, git_commit, package_versions, write_json


def save_run_record(
    output_dir: str | os.PathLike, recipe_path: str | None, merged: dict, *configs, processor=None
) -> Path:
    """Write ``<output_dir>/run_config.json``: the recipe as given, every resolved field, provenance, and
    the pixel budget the processor actually resizes into (``min_pixels: null`` in a recipe means the
    checkpoint's own; this records what that was)."""
    resolved = {}
    for cfg in configs:
        if hasattr(cfg, "to_dict"):
            resolved[type(cfg).__name__] = cfg.to_dict()
        else:
            resolved[type(cfg).__name__] = dataclasses.asdict(cfg)
    path = Path(output_dir) / "run_config.json"
    write_json(
        path,
        {
            "recipe": recipe_path,
            "recipe_values": merged,
            "resolved": resolved,
            "git_commit": git_commit(),
            "packages": package_versions(),
            "argv": sys.argv,
            "pixel_budget": _pixel_budget(processor),
        },
    )
    return path


def _pixel_budget(processor) -> dict[str, int] | None:
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None:
        return None
    from tgrl.pixels import budget_of

    return budget_of(image_processor).as_dict()


def resolve_resume(output_dir: str, resume: str | None) -> str | None:
    """``resume_from_checkpoint``: 'auto' -> the last ``checkpoint-N`` in ``output_dir`` (or a fresh
    start), a path -> that path, None/'' -> no resume."""
    if not resume:
        return None
    if resume != "auto":
        if not Path(resume).is_dir():
            raise UserError(f"resume_from_checkpoint {resume}: not a checkpoint folder")
        return resume
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None


def train_and_save(
    trainer, processor, argv: list[str], merged: dict, script_args, training_args, model_args, tag: str
) -> None:
    """The common end of train/rl.py and train/sft.py: write the run record, resume if asked, train, then
    save the final model, the processor (so the folder loads with AutoProcessor) and the trainer state."""
    output_dir = training_args.output_dir
    if trainer.accelerator.is_main_process:
        save_run_record(
            output_dir,
            split_config_arg(argv)[0],
            merged,
            script_args,
            training_args,
            model_args,
            processor=processor,
        )
    resume = resolve_resume(output_dir, training_args.resume_from_checkpoint)
    if resume:
        print(f"[{tag}] resuming from {resume}")
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(output_dir)
    if trainer.accelerator.is_main_process:
        processor.save_pretrained(output_dir)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
