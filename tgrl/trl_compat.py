"""The TRL internals TGRLTrainer relies on, and the guard that stops a TRL release nobody tested it with.

TGRLTrainer overrides and calls private ``GRPOTrainer`` names that a minor TRL release may rename, and
an override whose parent was renamed is silently never called; so :data:`TESTED_TRL` and
:func:`contract_problems` refuse an untested release (docs/design.md#101-errors). Also the workarounds:
:class:`CheckpointKeyFixMixin` (resume of key-renamed models, docs/environment.md#9-qwen25-vl-inputs)
and :func:`route_vllm_prompts` (placeholders expanded twice, docs/design.md#85-image-placeholders-for-vllm).
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
# The TRL change that makes route_vllm_prompts' collapse unnecessary: TRL PR #6718 ("feed vLLM unexpanded
# image placeholders", open; in no release up to 1.16.0). The collapse is a no-op on prompts that already
# hold one placeholder per image, so it stays safe on a TRL that contains the fix.
VLLM_PLACEHOLDER_FIX = "huggingface/trl PR #6718 (not in TRL <= 1.16.0)"
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

# vLLM generation object whose ``generate`` route_vllm_prompts wraps.
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
        "The private names it relies on exist with the expected parameters; their behaviour is not verified. "
        "The vLLM image-placeholder workaround (route_vllm_prompts) can go once TRL contains "
        f"{VLLM_PLACEHOLDER_FIX}",
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


# ---------------------------------------------------------------------------------------------------
# vLLM prompts: one image placeholder per image (TRL issue #6294)


def collapse_image_runs(ids: list[int], image_token_id: int | None) -> list[int]:
    """``ids`` with each run of ``image_token_id`` cut to one token: the prompt as a chat template renders
    it, before a processor expands each image's placeholder into one token per image feature. (Qwen-VL
    templates put every placeholder between ``<|vision_start|>`` and ``<|vision_end|>``, so two images never
    form one run.)"""
    out: list[int] = []
    for token in ids:
        if token == image_token_id and out and out[-1] == image_token_id:
            continue
        out.append(token)
    return out


def check_vllm_prompt_lengths(
    expanded: list[list[int]], returned: list[list[int]] | None, image_token_id: int | None
) -> None:
    """Raise when vLLM's prompt (as it returned it, image placeholders expanded by its own processor) is
    not the trainer's ``expanded`` prompt: the rollout would then belong to another prompt than the one the
    loss scores. The message names the cause it detects: a placeholder expanded twice (vLLM was sent
    expanded ids), or another image-token count (other pixel bounds). Checked on every generation (a
    length comparison), so the first one already fails."""
    if returned is None:
        return
    if len(returned) != len(expanded):
        raise RuntimeError(f"vLLM returned {len(returned)} prompts for {len(expanded)} sent")
    for i, (ours, theirs) in enumerate(zip(expanded, returned, strict=True)):
        if len(ours) == len(theirs):
            continue
        n_ours, n_theirs = ours.count(image_token_id), theirs.count(image_token_id)
        n_images = len(collapse_image_runs(ours, image_token_id)) - (len(ours) - n_ours)
        head = (
            f"vLLM's prompt {i} has {len(theirs)} tokens ({n_theirs} image tokens), the trainer's has "
            f"{len(ours)} ({n_ours} image tokens for {n_images} image(s))"
        )
        if n_theirs - n_ours == n_ours - n_images > 0:
            raise RuntimeError(
                f"{head}: vLLM expanded image placeholders that were already expanded (TRL issue #6294), so "
                "the image features land on the wrong tokens. Fix: vLLM must get one placeholder per image: "
                "train through TGRLTrainer, whose route_vllm_prompts collapses them in colocate mode "
                "(tgrl/trl_compat.py)"
            )
        if n_theirs != n_ours:
            raise RuntimeError(
                f"{head}: vLLM resized an image with other pixel bounds than the trainer's processor, so "
                "the rollout does not belong to the prompt the loss scores. Fix: train through "
                "TGRLTrainer, which fits every image into the processor's budget first (tgrl/pixels.py), "
                "and keep min_pixels/max_pixels inside the checkpoint's own preprocessor bounds"
            )
        raise RuntimeError(
            f"{head}: same image tokens, other text tokens: vLLM tokenized the prompt differently. Fix: "
            "give vLLM the trainer's tokenizer (the same checkpoint folder)"
        )


def route_vllm_prompts(vllm_generation: Any, image_token_id: int | None) -> None:
    """Wrap TRL's ``VLLMGeneration.generate`` so vLLM gets the prompts it expects, and check what it made
    of them.

    Colocate mode: TRL 1.16 hands vLLM the processor-expanded prompt ids with the raw images, and vLLM's
    multimodal processor applies the image prompt update again (no "already expanded" check), so each
    image's first placeholder grows by N - 1 tokens. The ids vLLM gets are collapsed to one placeholder per
    image; the trainer keeps the expanded ids for its forward and loss. Server mode needs no collapse: TRL
    renders the images on the server and places their features on the runs of image tokens in the expanded
    ids (``VLLMGeneration._place_features``). In both modes the prompt vLLM returns is compared with the
    expanded one (:func:`check_vllm_prompt_lengths`)."""
    generate = vllm_generation.generate

    def routed_generate(prompts, images, num_generations, profiler=None):
        sent = prompts
        if vllm_generation.mode == "colocate" and images is not None:
            sent = [collapse_image_runs(list(ids), image_token_id) for ids in prompts]
        out = generate(prompts=sent, images=images, num_generations=num_generations, profiler=profiler)
        check_vllm_prompt_lengths([list(ids) for ids in prompts], out[0], image_token_id)
        return out

    vllm_generation.generate = routed_generate


# ---------------------------------------------------------------------------------------------------
# DeepSpeed


def adapt_to_deepspeed(args: Any, accelerator: Any) -> None:
    """What a TGRL run needs under DeepSpeed: ZeRO-3 only with gathered weights for the token pass (its
    rank-local forwards differ in size), and the grad-share diagnostic and prefix sharing switched off with
    one logged line each (``autograd.grad`` on parameters DeepSpeed partitions and hooks is not something we
    can vouch for; prefix sharing calls the model's parts directly, past the engine), so a recipe with them
    still runs."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    token_pass = (
        args.inject_mode != "never" or args.onpolicy_token_weight != "none" or args.vis_dep_diag_every
    )
    if plugin.zero_stage == 3 and token_pass and not args.ds3_gather_for_generation:
        raise ValueError("ZeRO-3 needs ds3_gather_for_generation: true for the TGRL token pass")
    if args.grad_share_every:
        if accelerator.is_main_process:
            print(
                f"[tgrl] grad_share_every {args.grad_share_every} -> 0: the grad/ diagnostic is off "
                f"under DeepSpeed (ZeRO-{plugin.zero_stage})",
                flush=True,
            )
        args.grad_share_every = 0
    if args.share_prompt_prefix:  # the engine wraps the model: the prompt pass would bypass its hooks
        if accelerator.is_main_process:
            print(
                f"[tgrl] share_prompt_prefix -> false: TRL's per-row forward under DeepSpeed "
                f"(ZeRO-{plugin.zero_stage})",
                flush=True,
            )
        args.share_prompt_prefix = False


# ---------------------------------------------------------------------------------------------------
# resume


class CheckpointKeyFixMixin:
    """Resume that restores the weights of key-renamed models (Qwen2.5-VL and most VLMs).

    transformers 5.20's ``Trainer._load_from_checkpoint`` reads ``model.safetensors`` with a plain
    ``load_state_dict(strict=False)``, but ``save_pretrained`` wrote the original hub key names
    (``visual.*``, ``model.layers.*``) while the module has ``model.visual.*``,
    ``model.language_model.*``: every key misses, a warning is logged and training silently restarts
    from the initial weights (huggingface/transformers#43701, open). Here the checkpoint is read through
    ``from_pretrained``, which applies the renaming, and loaded strictly. DeepSpeed resumes from its own
    engine state and never comes here; PEFT adapters and FSDP keep the stock path.
    """

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        from accelerate.utils import is_peft_model

        model = self.model if model is None else model
        full = any(
            os.path.isfile(os.path.join(resume_from_checkpoint, name))
            for name in ("model.safetensors", "model.safetensors.index.json")
        )
        if not full or is_peft_model(model) or self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        dtype = next(model.parameters()).dtype
        loaded = type(model).from_pretrained(resume_from_checkpoint, dtype=dtype)
        model.load_state_dict(loaded.state_dict(), strict=True)
