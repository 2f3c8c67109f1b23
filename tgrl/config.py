"""Recipes: one flat YAML per run, parsed into dataclasses (TRL's TrlParser style), plus CLI overrides.

    python train/rl.py --config train/recipes/tiny/tgrl.yaml seed=1 --learning_rate 5e-5

Every key of a recipe is a field of one of the script's dataclasses (``RLScriptArguments`` or
``SFTScriptArguments``, the trainer config, TRL's ``ModelConfig``); a key none of them knows is an
error that names the key, the file and the closest valid names. Overrides on the command line come
after ``--config`` as ``key=value`` or ``--key value`` and win over the file. A recipe may carry an
``env:`` mapping of environment variables (set before anything is built).

Why not plain argparse: TRL silently ignores nothing, but a typo in a YAML recipe must never fall
back to a library default (STYLE.md: never inherit influential defaults), so unknown keys fail here.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

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
            "help": "Problem JSONL (DESIGN 4). Rows whose meta.expert holds a filtered teacher trajectory get it "
            "injected into their group; rows without one (null/absent) train as plain GRPO groups."
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
            "tgrl.pixels.DEFAULT_BUDGET). Images are fitted into this budget before rollouts (issue 11)."
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
            "EasyR1's default trains it (BENCHMARKS.md section 7)."
        },
    )


@dataclass
class SFTScriptArguments:
    """Data settings of ``train/sft.py`` (SFT on teacher trajectories, or the tiny direct-answer base)."""

    method: str = field(default="sft", metadata={"help": "Run label in results tables (sft, base)."})
    train_file: str = field(
        default="data/synthetic/train.jsonl", metadata={"help": "Problem JSONL (DESIGN 4)."}
    )
    sft_target: str = field(
        default="expert",
        metadata={
            "help": "'expert': train on meta.expert.text (the filtered teacher trajectory; rows without one are "
            "skipped, so SFT sees exactly the trajectories RL injects). 'direct': train on '<answer>GOLD</answer>' "
            "with no reasoning (the tiny tier's weak base, DESIGN 7)."
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
# Parsing
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


def _field_types(cls) -> dict[str, Any]:
    import typing

    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # a forward reference we cannot resolve: fall back to the raw annotations
        hints = {}
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(cls) if f.init}


def _base_types(tp: Any) -> list[Any]:
    import types
    import typing

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return [t for arg in typing.get_args(tp) for t in _base_types(arg)]
    return [tp]


def coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Convert a YAML or command-line value to a field's annotated type (``1e-4`` -> float, "true" -> bool).

    YAML 1.1 reads ``1e-4`` as a string, and the command line gives strings only, so every value goes
    through here; values of the right type pass unchanged.
    """
    import typing

    bases = _base_types(tp)
    # "none" is a real value of some fields (report_to, scale_rewards): null only where no string fits
    nullish = value in ("null", "None", "~") or (value == "none" and str not in bases)
    if value is None or nullish:
        if type(None) in bases or any(b is typing.Any for b in bases):
            return None
        raise UserError(f"{where}: '{key}' cannot be null")
    errors = []
    for base in [b for b in bases if b is not type(None)]:
        origin = typing.get_origin(base) or base
        try:
            if base is typing.Any:
                return value
            if origin is bool:
                if isinstance(value, bool):
                    return value
                if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
                    return True
                if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
                    return False
                raise ValueError("not a boolean (true/false)")
            if origin is int:
                if isinstance(value, bool):
                    raise ValueError("a boolean is not an integer")
                if isinstance(value, int):
                    return value
                if isinstance(value, float) and value.is_integer():
                    return int(value)
                if isinstance(value, str):
                    return int(value)
                raise ValueError("not an integer")
            if origin is float:
                if isinstance(value, bool):
                    raise ValueError("a boolean is not a number")
                return float(value)
            if origin is str:
                if isinstance(value, (dict, list)):
                    raise ValueError("expected a string")
                return str(value)
            if origin in (list, tuple):
                (item_type,) = typing.get_args(base)[:1] or (typing.Any,)
                if isinstance(value, str):
                    value = [v for v in value.split(",") if v != ""] if value else []
                if not isinstance(value, list | tuple):
                    value = [value]
                return [coerce(v, item_type, key, where) for v in value]
            if origin is dict:
                if isinstance(value, str):
                    value = yaml.safe_load(value)
                if not isinstance(value, dict):
                    raise ValueError("expected a mapping")
                return value
            if typing.get_origin(base) is typing.Literal:
                if value in typing.get_args(base):
                    return value
                raise ValueError(f"must be one of {typing.get_args(base)}")
            if isinstance(base, type) and isinstance(value, base):
                return value
            return base(value)  # enums and other simple types
        except (TypeError, ValueError) as err:
            errors.append(str(err))
    raise UserError(f"{where}: '{key}' = {value!r} has the wrong type ({'; '.join(errors) or tp})")


def parse_recipe(
    dataclass_types: Sequence[type], argv: Sequence[str] | None = None
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Parse ``--config RECIPE`` plus overrides into one instance per dataclass type.

    Returns the instances and the merged raw mapping (recipe + overrides, for the run record). A key
    shared by several dataclasses goes to each of them, as in TrlParser.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    config_path, rest = split_config_arg(argv)
    recipe = load_recipe(config_path) if config_path else {}
    env = recipe.pop("env", None) or {}
    if not isinstance(env, dict):
        raise UserError(f"{config_path}: 'env' must be a mapping of environment variables")
    overrides = overrides_to_dict(rest)

    types = {cls: _field_types(cls) for cls in dataclass_types}
    known = {name for fields in types.values() for name in fields}
    for source, mapping in ((config_path, recipe), ("command line", overrides)):
        unknown = sorted(set(mapping) - known)
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(key, sorted(known), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            owners = ", ".join(cls.__name__ for cls in dataclass_types)
            raise UserError(
                f"{source}: unknown key '{key}' (not a field of {owners}).{hint}"
                + (f" Other unknown keys: {unknown[1:]}" if len(unknown) > 1 else "")
            )

    for key, value in env.items():
        os.environ[str(key)] = str(value)
    merged = {**recipe, **overrides}
    instances = []
    for cls in dataclass_types:
        kwargs = {}
        for key, value in merged.items():
            if key in types[cls]:
                where = "command line" if key in overrides else str(config_path)
                kwargs[key] = coerce(value, types[cls][key], key, where)
        try:
            instances.append(cls(**kwargs))
        except UserError:
            raise
        except (TypeError, ValueError) as err:
            raise UserError(f"{config_path or 'command line'}: invalid {cls.__name__}: {err}") from None
    return tuple(instances), merged


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
