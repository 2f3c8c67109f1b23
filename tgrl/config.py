"""Recipes: one flat YAML per run, parsed into dataclasses by TRL's ``TrlParser``, plus CLI overrides.

    python train/rl.py --config train/recipes/tiny/tgrl.yaml seed=1 --learning_rate 5e-5

Every key of a recipe is a field of one of the script's dataclasses (``RLScriptArguments`` or
``SFTScriptArguments``, the trainer config, TRL's ``ModelConfig``); a key none of them knows is an
error that names the key, the file and the closest valid names. Overrides on the command line come
after ``--config`` as ``key=value`` or ``--key value`` and win over the file. A recipe may carry an
``env:`` mapping of environment variables (set before anything is built).

``TrlParser`` does the reading, the ``env:`` mapping, the type conversion and the precedence. The thin
layer here adds what a recipe user needs on top: ``key=value`` overrides, no prefix matching, and
errors that name the file and the closest key (a typo must never fall back to a library default,
docs/design.md#101-errors), raised as :class:`UserError` so scripts exit without a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl import TrlParser

from tgrl.utils import UserError, git_commit, load_yaml_mapping, package_versions, write_json

# --------------------------------------------------------------------------------------------------
# Script arguments (what is neither a TRL training argument nor a model argument)
# --------------------------------------------------------------------------------------------------


@dataclass
class RLScriptArguments:
    """Data and reward settings of ``train/rl.py`` (GRPO, TGRL, LUFFY-VL and ablations)."""

    method: str = field(
        default="tgrl",
        metadata={
            "help": "Run label in results tables (eval/tables.yaml method names: grpo, tgrl, luffy_vl, ...)."
        },
    )
    train_file: str = field(
        default="data/synthetic/train.jsonl",
        metadata={
            "help": "Problem JSONL (docs/design.md#41-problems). Rows whose meta.expert holds a filtered "
            "teacher trajectory get it injected into their group; rows without one (null/absent) train as "
            "plain GRPO groups."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N problems (smoke tests); None = all."}
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["accuracy", "format"],
        metadata={"help": "Names from tgrl.rewards.REWARD_FUNCS; weights via reward_weights (TRL)."},
    )
    min_pixels: int | None = field(
        default=None,
        metadata={
            "help": "Processor min_pixels (None = the checkpoint's processor config; the 7B recipes set "
            "tgrl.pixels.DEFAULT_BUDGET). Images are fitted into this budget before rollouts."
        },
    )
    max_pixels: int | None = field(
        default=None,
        metadata={
            "help": "Processor max_pixels (None = the checkpoint's; 7B recipes: tgrl.pixels.DEFAULT_BUDGET)."
        },
    )
    freeze_vision_tower: bool = field(
        default=False,
        metadata={
            "help": "Freeze the vision encoder (and its merger). NoisyRollout / MM-Eureka freeze it at 7B; "
            "EasyR1's default trains it (docs/anchors.md#11-published-7b-recipes)."
        },
    )


@dataclass
class SFTScriptArguments:
    """Data settings of ``train/sft.py`` (SFT on teacher trajectories, or the tiny direct-answer base)."""

    method: str = field(default="sft", metadata={"help": "Run label in results tables (sft, base)."})
    train_file: str = field(
        default="data/synthetic/train.jsonl", metadata={"help": "Problem JSONL (docs/design.md#41-problems)."}
    )
    sft_target: str = field(
        default="expert",
        metadata={
            "help": "'expert': train on meta.expert.text (the filtered teacher trajectory; rows without "
            "one are skipped, so SFT sees exactly the trajectories RL injects). 'direct': train on "
            "'<answer>GOLD</answer>' with no reasoning (the tiny tier's weak base, "
            "docs/tiny_tier.md#6-weak-base)."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N problems (smoke tests); None = all."}
    )
    min_pixels: int | None = field(default=None, metadata={"help": "Processor min_pixels."})
    max_pixels: int | None = field(default=None, metadata={"help": "Processor max_pixels."})
    freeze_vision_tower: bool = field(default=False, metadata={"help": "Freeze the vision encoder."})

    def __post_init__(self):
        if self.sft_target not in ("expert", "direct"):
            raise UserError(f"sft_target must be 'expert' or 'direct', got {self.sft_target!r}")


# --------------------------------------------------------------------------------------------------
# Parsing: TRL's TrlParser, plus key=value overrides, close-match hints and errors that name the file
# --------------------------------------------------------------------------------------------------


def load_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """Read one recipe YAML (a flat mapping); errors name the file."""
    return load_yaml_mapping(path, "recipe", fix="see train/recipes/ for the shipped recipes")


def split_config_arg(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """Pull ``--config PATH`` (or ``--config=PATH`` / ``config=PATH``) out of ``argv``."""
    rest, config = [], None
    argv = list(argv)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            if i + 1 >= len(argv):
                raise UserError("--config needs a path to a recipe YAML")
            config = argv[i + 1]
            i += 2
            continue
        if arg.startswith("--config=") or arg.startswith("config="):
            config = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return config, rest


def overrides_to_dict(argv: Sequence[str]) -> dict[str, str | list[str]]:
    """``key=value``, ``--key=value``, ``--key value`` (``--flag`` alone = true; ``--key a b`` = list)."""
    out: dict[str, str | list[str]] = {}
    argv = list(argv)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            key = arg[2:]
            if "=" in key:
                key, value = key.split("=", 1)
                out[key] = value
                i += 1
                continue
            values = []
            i += 1
            while i < len(argv) and not argv[i].startswith("--") and "=" not in argv[i]:
                values.append(argv[i])
                i += 1
            out[key] = values[0] if len(values) == 1 else (values or "true")
        elif "=" in arg:
            key, value = arg.split("=", 1)
            out[key] = value
            i += 1
        else:
            raise UserError(f"cannot read command-line argument {arg!r}. Fix: write overrides as key=value")
    return out


class RecipeParser(TrlParser):
    """``TrlParser`` with the errors a recipe user needs: no prefix matching (``learning_rat`` is a typo,
    not ``learning_rate``), and argparse's usage-and-exit turned into a :class:`UserError`."""

    def __init__(self, dataclass_types: Sequence[type]):
        super().__init__(dataclass_types, allow_abbrev=False, exit_on_error=False)

    def error(self, message: str):
        raise UserError(message)

    def set_defaults_with_config(self, **config: Any) -> list[str]:
        # argparse converts string defaults only: YAML numbers and booleans go through the field's type as
        # their command-line spelling would (``warmup_steps: 20`` -> 20.0, ``seed: 1.5`` -> an error).
        scalars = (bool, int, float)
        config = {k: str(v) if isinstance(v, scalars) else v for k, v in config.items()}
        return super().set_defaults_with_config(**config)

    def check_keys(self, mapping: dict[str, Any], source: str) -> None:
        """Fail on the first key that no dataclass field takes, naming ``source`` and the closest fields."""
        fields = sorted({action.dest for action in self._actions if action.option_strings})
        unknown = sorted(set(mapping) - set(fields))
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(key, fields, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            owners = ", ".join(cls.__name__ for cls in self.dataclass_types)
            raise UserError(
                f"{source}: unknown key '{key}' (not a field of {owners}).{hint}"
                + (f" Other unknown keys: {unknown[1:]}" if len(unknown) > 1 else "")
            )

    def to_args(self, overrides: dict[str, str | list[str]]) -> list[str]:
        """Overrides as argparse tokens; a list field also takes ``a,b`` (one shell word)."""
        args = []
        for key, value in overrides.items():
            values = value if isinstance(value, list) else [value]
            if self._option_string_actions[f"--{key}"].nargs == "+":
                values = [part for item in values for part in item.split(",") if part]
            args += [f"--{key}", *values]
        return args


def parse_recipe(
    dataclass_types: Sequence[type], argv: Sequence[str] | None = None
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Parse ``--config RECIPE`` plus overrides into one instance per dataclass type.

    ``TrlParser`` reads the recipe, sets its ``env:`` variables, converts the values and lets the command
    line win. What this adds: ``key=value`` overrides, errors that name the file and the closest valid
    key, and the merged raw mapping (recipe + overrides) it returns for the run record.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    config_path, rest = split_config_arg(argv)
    recipe = load_recipe(config_path) if config_path else {}  # TrlParser's own read names no file
    if not isinstance(recipe.get("env") or {}, dict):
        raise UserError(f"{config_path}: 'env' must be a mapping of environment variables")
    overrides = overrides_to_dict(rest)
    parser = RecipeParser(dataclass_types)
    parser.check_keys({k: v for k, v in recipe.items() if k != "env"}, str(config_path))
    parser.check_keys(overrides, "command line")
    args = (["--config", config_path] if config_path else []) + parser.to_args(overrides)
    try:
        instances = parser.parse_args_and_config(args)
    except argparse.ArgumentError as err:  # a value argparse could not convert to the field's type
        key = (err.argument_name or "").split("/")[0].removeprefix("--")
        where = "command line" if key in overrides else str(config_path)
        value = overrides.get(key, recipe.get(key))
        raise UserError(f"{where}: '{key}' = {value!r} has the wrong type ({err.message})") from None
    except (TypeError, ValueError) as err:  # a dataclass's own validation
        raise UserError(f"{config_path or 'command line'}: {err}") from None
    recipe.pop("env", None)
    return tuple(instances), {**recipe, **overrides}


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


# --------------------------------------------------------------------------------------------------
# What a recipe's model and output sections resolve to (shared by train/rl.py and train/sft.py)
# --------------------------------------------------------------------------------------------------


def load_policy(model_args, min_pixels=None, max_pixels=None, freeze_vision_tower=False):
    """(model, processor) of ``model_args.model_name_or_path`` with the Auto classes; the vision tower
    (``visual`` / ``vision_tower`` parameters) frozen on request. No ``.to(device)``: the Trainer
    (and DeepSpeed ZeRO-3's partitioned init) places the weights."""
    from transformers import AutoModelForImageTextToText

    from tgrl.modeling import load_processor

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
