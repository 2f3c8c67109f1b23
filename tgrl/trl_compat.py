"""The TRL internals TGRLTrainer relies on, and the guard that stops a TRL release nobody tested it with.

Why: TGRLTrainer is a small subclass of ``trl.GRPOTrainer`` that overrides and calls *private* methods
(``_generate_single_turn``, ``_calculate_rewards``, ``_get_per_token_logps_and_entropies``, ...) and reads
private attributes (``_metrics``, ``_tokenizer``, ``eos_token_ids``, ...). TRL may rename or re-sign any of
them in a minor release; an override whose parent method was renamed is then silently never called, and
the run trains plain GRPO (or crashes hours in). So:

* :data:`TESTED_TRL` names the TRL major.minor this code was written and tested against. Constructing a
  TGRLTrainer under another major.minor fails with a message saying so, unless the user sets the explicit
  override ``TGRL_ALLOW_UNTESTED_TRL=1`` (environment, or a recipe's ``env:`` mapping). Even then every
  name below must exist with the expected parameters (:func:`contract_problems`), or it fails.
* tests/test_trl_compat.py checks the contract against the installed TRL, so a TRL upgrade shows at once
  which private names moved.
"""

from __future__ import annotations

import importlib
import inspect
import os
import warnings
from typing import Any

from tgrl.utils import UserError

TESTED_TRL = (
    "1.16"  # major.minor; pinned as trl==1.16.0 in requirements-cpu.txt, pyproject.toml, environment.yml
)
OVERRIDE_ENV = "TGRL_ALLOW_UNTESTED_TRL"

# GRPOTrainer methods TGRLTrainer overrides or calls: name -> parameter names after ``self``, in order.
METHODS: dict[str, tuple[str, ...]] = {
    "_generate_single_turn": (
        "prompt_ids",
        "images",
        "multimodal_fields",
        "num_generations",
        "has_tool_images",
    ),
    "_generate_and_score_completions": ("inputs",),
    "_calculate_rewards": ("inputs", "prompts", "completions", "completion_ids_list"),
    "_get_per_token_logps_and_entropies": (
        "model",
        "input_ids",
        "attention_mask",
        "logits_to_keep",
        "batch_size",
        "compute_entropy",
        "compute_aux_loss",
        "pixel_values",
        "image_grid_thw",
        "num_images",
        "pixel_attention_mask",
        "spatial_shapes",
        "num_tiles",
        "image_sizes",
        "token_type_ids",
        "mm_token_type_ids",
        "image_position_ids",
    ),
    "_compute_loss": ("model", "inputs"),
    "_load_from_checkpoint": ("resume_from_checkpoint", "model"),  # transformers.Trainer
    "training_step": ("model", "inputs", "num_items_in_batch"),
    "log": ("logs", "start_time"),
}

# Functions imported from TRL modules: "module:name" -> parameter names.
FUNCTIONS: dict[str, tuple[str, ...]] = {
    "trl.models.utils:unwrap_model_for_generation": (
        "model",
        "accelerator",
        "gather_deepspeed3_params",
        "generation_kwargs",
        "gradient_checkpointing_kwargs",
    ),
    "trl.trainer.utils:split_pixel_values_by_grid": ("batch",),
}

# vLLM generation object whose ``generate`` the image-token check wraps
# (tgrl.trainer.check_vllm_prompt_lengths).
VLLM_GENERATE = (
    "trl.generation.vllm_generation:VLLMGeneration",
    ("prompts", "images", "num_generations", "profiler"),
)

# Attributes GRPOTrainer.__init__ sets and TGRLTrainer reads (private ones first).
ATTRIBUTES: tuple[str, ...] = (
    "_tokenizer",
    "_metrics",
    "eos_token_ids",
    "num_generations",
    "max_completion_length",
    "loss_type",
    "beta",
    "use_vllm",
    "vllm_mode",
    "vllm_importance_sampling_correction",
    "reward_funcs",
    "reward_weights",
    "entropy_coef",
    "aux_loss_enabled",
    "router_aux_loss_coef",
    "epsilon_low",
    "epsilon_high",
    "accelerator",
    "model_wrapped",
    "is_fsdp_enabled",
)

# GRPOConfig fields TGRLConfig validates or the trainer reads.
CONFIG_FIELDS: tuple[str, ...] = (
    "num_generations",
    "per_device_train_batch_size",
    "steps_per_generation",
    "scale_rewards",
    "loss_type",
    "epsilon",
    "epsilon_high",
    "beta",
    "entropy_coef",
    "importance_sampling_level",
    "off_policy_mask_threshold",
    "top_entropy_quantile",
    "use_adaptive_entropy",
    "delta",
    "multi_objective_aggregation",
    "generation_kwargs",
    "use_vllm",
    "vllm_mode",
    "vllm_tensor_parallel_size",
    "vllm_max_model_length",
    "vllm_importance_sampling_correction",
    "use_bias_correction_kl",
    "ds3_gather_for_generation",
    "gradient_checkpointing_kwargs",
    "max_completion_length",
)


def _major_minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def _parameters(func: Any) -> tuple[str, ...]:
    return tuple(name for name in inspect.signature(func).parameters if name != "self")


def _resolve(spec: str) -> Any:
    """``"package.module:Name.attr"`` -> the object."""
    module, path = spec.split(":")
    obj = importlib.import_module(module)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def contract_problems() -> list[str]:
    """Every private TRL name tgrl relies on that is missing or has other parameters (empty = all present)."""
    from trl import GRPOConfig, GRPOTrainer

    problems = []
    for name, expected in METHODS.items():
        method = getattr(GRPOTrainer, name, None)
        if method is None:
            problems.append(f"GRPOTrainer.{name} is gone")
        elif _parameters(method) != expected:
            problems.append(f"GRPOTrainer.{name}{_parameters(method)} != expected {expected}")
    checks = [*FUNCTIONS.items(), (f"{VLLM_GENERATE[0]}.generate", VLLM_GENERATE[1])]
    for spec, expected in checks:
        try:
            func = _resolve(spec)
        except (ImportError, AttributeError):
            problems.append(f"{spec} is gone")
            continue
        if _parameters(func) != expected:
            problems.append(f"{spec}{_parameters(func)} != expected {expected}")
    fields = set(getattr(GRPOConfig, "__dataclass_fields__", {}))
    problems += [f"GRPOConfig.{name} is gone" for name in CONFIG_FIELDS if name not in fields]
    return problems


def check_trl_version(version: str | None = None) -> None:
    """Fail (clearly) on a TRL major.minor other than :data:`TESTED_TRL`, unless
    ``TGRL_ALLOW_UNTESTED_TRL=1``; with the override, warn, and still fail if a private name tgrl relies
    on moved."""
    if version is None:
        import trl

        version = trl.__version__
    if _major_minor(version) == TESTED_TRL:
        return
    if os.environ.get(OVERRIDE_ENV, "") not in ("1", "true", "yes"):
        raise UserError(
            f"tgrl's TGRLTrainer was written and tested against TRL {TESTED_TRL}.x; the installed TRL is "
            f"{version}. It overrides GRPOTrainer methods, most of them private ({', '.join(METHODS)}), that "
            "TRL may rename or re-sign in any minor release, which would silently turn TGRL into "
            f"plain GRPO. Fix: install trl=={TESTED_TRL}.0 (requirements-cpu.txt / environment.yml), "
            "or, after `pytest "
            f"tests/test_trl_compat.py tests/test_trainer.py` passes with your TRL, set {OVERRIDE_ENV}=1"
        )
    problems = contract_problems()
    if problems:
        raise UserError(
            f"{OVERRIDE_ENV} is set, but TRL {version} lacks what TGRLTrainer relies on: "
            + "; ".join(problems)
            + f". Fix: install trl=={TESTED_TRL}.0, or port tgrl/trainer.py and tgrl/trl_compat.py"
        )
    warnings.warn(
        f"running TGRLTrainer on untested TRL {version} ({OVERRIDE_ENV}=1; tested: {TESTED_TRL}.x). "
        "The private names it relies on exist with the expected parameters; their behaviour is not verified",
        stacklevel=2,
    )


def check_trainer_attributes(trainer: Any) -> None:
    """After ``GRPOTrainer.__init__``: every attribute of :data:`ATTRIBUTES` exists (else a clear error, not
    an AttributeError mid-run)."""
    missing = [name for name in ATTRIBUTES if not hasattr(trainer, name)]
    if trainer.use_vllm and not hasattr(trainer, "vllm_generation"):
        missing.append("vllm_generation")
    if missing:
        raise UserError(
            f"GRPOTrainer no longer sets {missing} (TGRLTrainer reads them). "
            f"Fix: install trl=={TESTED_TRL}.0, or port tgrl/trainer.py"
        )
