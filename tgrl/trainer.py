"""TGRL: trajectory-guided RL for multimodal RLVR, as a small subclass of TRL's GRPOTrainer.

Where to look (docs/design.md#5-the-tgrl-algorithm; the maths lives in tgrl/token_weights.py as pure tensor
functions):

* the expert slot of each group ......... TGRLTrainer._generate_single_turn
* advantages (on_only), group filter ..... TGRLTrainer._adjust_advantages
* visual dependency and token weights .... TGRLTrainer._token_pass
* THE LOSS ............................... TGRLTrainer._compute_loss -> token_weights.tgrl_loss_terms

GRPO is this trainer with guidance off (``inject_mode: never``, ``onpolicy_token_weight: none``):
then the loss and its gradients equal stock GRPOTrainer's on the same batch (tests/test_trainer.py).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
from accelerate.utils import gather_object, is_peft_model
from trl import GRPOConfig, GRPOTrainer
from trl.models.utils import unwrap_model_for_generation
from trl.trainer.utils import split_pixel_values_by_grid

from tgrl.metrics import COMPLETIONS_FILE, DATA_ORDER_FILE, JsonlMetricsCallback, quiet_console
from tgrl.modeling import VISION_SPECIAL_TOKENS, vision_token_ids
from tgrl.perturb import MODES as PERTURB_MODES
from tgrl.perturb import perturb_pixel_values
from tgrl.pixels import fit_row_images, pixel_fit_of
from tgrl.probe import fact_token_positions
from tgrl.rewards import accuracy_reward, completion_text
from tgrl.teachers.oracle import fact_accuracy
from tgrl.token_weights import (
    EXPERT_LOSS_NORMS,
    EXPERT_RATIOS,
    EXPERT_TOKEN_WEIGHTS,
    expert_token_weights,
    group_advantages,
    masked_mean,
    tgrl_loss_terms,
    visual_dependency,
)
from tgrl.trl_compat import check_trainer_attributes, check_trl_version
from tgrl.utils import append_jsonl

# The loss aggregation (docs/design.md#55-loss) is TRL's `loss_type` (one switch): how each maps onto
# tgrl_loss_terms.
LOSS_AGG = {
    "dapo": "token_mean",
    "bnpo": "token_mean",
    "grpo": "seq_mean_token_mean",
    "dr_grpo": "seq_mean_token_sum_norm",
}
EXPERT_COEF_SCHEDULES = ("constant", "linear", "cosine")
# Model inputs TRL's _get_per_token_logps_and_entropies takes beside the ids (None when absent).
_MODEL_INPUT_KEYS = (
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
)
# Multimodal keys whose rows we know how to select (Qwen2-VL / Qwen2.5-VL layout).
_ROW_KEYS = {"pixel_values", "image_grid_thw", "mm_token_type_ids"}


@dataclass
class TGRLConfig(GRPOConfig):
    """GRPOConfig plus the TGRL switches of docs/design.md#59-switches (all reconstructions: the paper's
    values are unknown to us; each help string says where our default comes from).

    Switches that TRL already has are TRL's own fields, not duplicates:
    eps_low / eps_high = ``epsilon`` / ``epsilon_high``; KL (on on-policy tokens only) = ``beta``;
    entropy coefficient = ``entropy_coef``; ``adv_std_norm`` = ``scale_rewards`` ("group" on,
    "none" off); ``loss_agg`` = ``loss_type`` (dapo/bnpo: token mean; grpo: per-sequence token mean;
    dr_grpo: constant divisor). Advantages are TRL's (r - mean) / (std + 1e-4) over the group, expert
    included ('mixed'); verl (LUFFY) uses 1e-6, TRL's value keeps GRPO bit-identical to stock GRPOTrainer
    (docs/design.md#11-deviations).
    """

    inject_mode: str = field(
        default="always",
        metadata={
            "help": "docs/design.md#53-groups. 'always': every group with an expert trajectory gets it in "
            "its last n_exp slots (LUFFY); 'on_fail': only when at most inject_gate on-policy rollouts are "
            "correct (HPT / BREAD gate); 'never': no expert = GRPO."
        },
    )
    inject_gate: int = field(
        default=0, metadata={"help": "on_fail gate g: inject when #correct rollouts <= g (HPT uses 0)."}
    )
    n_exp: int = field(
        default=1,
        metadata={
            "help": "Expert slots per group; n_on = num_generations - n_exp rollouts are generated (LUFFY "
            "7+1). Slots beyond the number of stored trajectories repeat them."
        },
    )
    adv_group: str = field(
        default="mixed",
        metadata={
            "help": "docs/design.md#53-groups. 'mixed': mean/std over the whole group incl. the expert "
            "(LUFFY paper and code); 'on_only': mean/std from on-policy members, applied to all (LUFFY "
            "grpo_split, CalibRL)."
        },
    )
    expert_ratio: str = field(
        default="shaped",
        metadata={
            "help": "docs/design.md#55-loss, f in l_exp = -A w f(pi_theta(y*)). 'shaped': p/(p+gamma) (LUFFY "
            "train.sh); 'raw_p': p (IS with pi_teacher=1); 'sft': log p; 'teacher_is': p/pi_teacher (needs "
            "stored per-token teacher log-probs, meta.expert.teacher_logprobs)."
        },
    )
    expert_gamma: float = field(default=0.1, metadata={"help": "gamma of 'shaped' (LUFFY p_div_p_0.1)."})
    expert_loss_norm: str = field(
        default="joint",
        metadata={
            "help": "docs/design.md#57-expert-term-strength. 'joint': one token mean over on-policy and "
            "expert tokens (LUFFY's 1/Z; an expert token's pull shrinks with the expert share of tokens, "
            "~1/8 at 7+1); 'separate': each term averaged over its own tokens, then summed (CHORD's (1-mu) "
            "L_RL + mu L_SFT, SRFT). Tiny-tier value chosen on validation (REPRODUCE.md, tiny tuning table)."
        },
    )
    expert_coef: float = field(
        default=1.0,
        metadata={
            "help": "Weight lambda of the expert term, loss = L_on + lambda L_exp (LUFFY's "
            "prefix_reward_weight_alpha = 1; not CHORD's mu, docs/design.md#57-expert-term-strength). The "
            "peak value when a schedule is set."
        },
    )
    expert_coef_schedule: str = field(
        default="constant",
        metadata={
            "help": "'constant', or after expert_coef_warmup_steps of linear warm-up a 'linear' / 'cosine' "
            "decay to expert_coef_end at max_steps (CHORD: warm-up, then decay of mu toward a small valley; "
            "the guidance anneals so train and test prompts match, docs/anchors.md#5-chord-and-srft)."
        },
    )
    expert_coef_end: float = field(
        default=0.0,
        metadata={"help": "expert_coef at the last step under 'linear'/'cosine' (CHORD valley 0.02)."},
    )
    expert_coef_warmup_steps: int = field(
        default=0, metadata={"help": "Linear warm-up of expert_coef from 0 (CHORD mu warm-up: 200 steps)."}
    )
    teacher_is_cap: float = field(
        default=3.0,
        metadata={
            "help": "expert_ratio 'teacher_is': p / pi_teacher is clipped at this value (no gradient above "
            "it), so one token the teacher sampled at low probability cannot blow the loss up. Default: "
            "TRL's vllm_importance_sampling_cap (truncated IS)."
        },
    )
    expert_neg_p_floor: float = field(
        default=1e-3,
        metadata={
            "help": "expert_ratio 'sft' with a negative advantage (a wrong expert: no-filter ablation, "
            "truncated experts) is unlikelihood -|A| log p, unbounded: below this p_theta the token gets no "
            "more gradient (ours; the PPO clip bounds on-policy tokens the same way). 0 = no floor."
        },
    )
    expert_token_weight: str = field(
        default="vis_dep",
        metadata={
            "help": "docs/design.md#56-token-weights: token reweighting w_t of expert tokens [abstract; "
            "formula ours]: 'vis_dep' (1 + alpha * min-max s_t, mean 1; VPPO-inspired), 'none' (LUFFY; the "
            "w/o-reweighting ablation), 'vis_topk' (VPPO mask), 'entropy_topk' (Prefix-RFT), 'chord_phi' "
            "(CHORD p(1-p)), 'trust_region' (TRAPO min(1, p/tau))."
        },
    )
    onpolicy_token_weight: str = field(
        default="none",
        metadata={
            "help": "u_t of on-policy tokens, same schemes (default none: u = 1, plain PPO-clip tokens)."
        },
    )
    vis_dep_alpha: float = field(default=1.0, metadata={"help": "alpha of 'vis_dep' (ours)."})
    vis_topk_rho: float = field(default=0.4, metadata={"help": "rho of 'vis_topk' (VPPO 7B script: 0.4)."})
    entropy_topk_frac: float = field(
        default=0.2, metadata={"help": "share of 'entropy_topk' (Prefix-RFT: 0.2)."}
    )
    trust_region_tau: float = field(
        default=0.1, metadata={"help": "tau of 'trust_region' (TRAPO clip_low 0.1)."}
    )
    p_min: float | None = field(
        default=None,
        metadata={
            "help": "docs/design.md#56-token-weights: expert tokens with pi_old < p_min get w = 0 (counted; "
            "ours). None = by ratio: 1e-4 for 'shaped' / 'raw_p' (their gradient there is ~0 anyway), 0 for "
            "'sft' / 'teacher_is' (the lowest-probability expert tokens are the ones imitation exists for). "
            "Resolved at start and recorded in the run config."
        },
    )
    perturb_mode: str = field(
        default="patch_blackening",
        metadata={
            "help": "docs/design.md#54-token-quantities perturbed image I~: patch_blackening (VPPO), noise, "
            "full_mask."
        },
    )
    perturb_prob: float = field(
        default=0.5, metadata={"help": "Per-14x14-patch blackening probability (VPPO black_prob 0.5)."}
    )
    on_policy_clip: bool = field(
        default=True,
        metadata={
            "help": "PPO clip on on-policy tokens (default on, docs/design.md#55-loss; LUFFY train.sh turns "
            "it off)."
        },
    )
    online_group_filter: bool = field(
        default=False,
        metadata={
            "help": "docs/design.md#52-filtering (DAPO dynamic sampling without refill): groups whose "
            "rewards all tie are masked out of the loss and its normaliser; the count is logged as "
            "groups/dropped."
        },
    )
    expert_overlong: str = field(
        default="error",
        metadata={
            "help": "An expert trajectory longer than max_completion_length (+ end-of-turn): 'error' (filter "
            "F2 should have rejected it; never truncate silently), 'truncate' (keep the first tokens, no "
            "end-of-turn; for the w/o-F2 ablation), 'drop' (that prompt trains as a plain GRPO group)."
        },
    )
    vis_dep_diag_every: int = field(
        default=0,
        metadata={
            "help": "Every N steps also run the perturbed-image pass on on-policy rollouts, to log "
            "vis_dep/on_policy (the 'visual evidence in reasoning' diagnostic, "
            "docs/design.md#58-diagnostics). 0 = never (the pass then runs on expert sequences only, unless "
            "on-policy weighting needs it)."
        },
    )
    grad_share_every: int = field(
        default=0,
        metadata={
            "help": "Every N steps measure the gradient norm of the on-policy and the expert term separately "
            "(two extra backward passes) and log grad/norm_on_policy, grad/norm_expert, grad/expert_share, "
            "grad/cos (docs/design.md#58-diagnostics: how much of the update the expert carries). 0 = never. "
            "Not with DeepSpeed."
        },
    )
    log_data_order: bool = field(
        default=True,
        metadata={
            "help": "Append the prompt ids of every generation batch to <output_dir>/data_order.jsonl."
        },
    )
    log_completions_every: int = field(
        default=0,
        metadata={
            "help": "Every N steps append every completion of the generation batch (text, tokens, reward, "
            "accuracy, fact accuracy, advantage, is_expert, and the token s_t / w_t the token pass computed "
            "that step) to <output_dir>/completions.jsonl, for eval/report_trajectories.py. 0 = never."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        choices = {
            "inject_mode": ("always", "on_fail", "never"),
            "adv_group": ("mixed", "on_only"),
            "expert_ratio": EXPERT_RATIOS,
            "expert_token_weight": EXPERT_TOKEN_WEIGHTS,
            "onpolicy_token_weight": EXPERT_TOKEN_WEIGHTS,
            "perturb_mode": PERTURB_MODES,
            "expert_overlong": ("error", "truncate", "drop"),
            "expert_loss_norm": EXPERT_LOSS_NORMS,
            "expert_coef_schedule": EXPERT_COEF_SCHEDULES,
            "loss_type": tuple(LOSS_AGG),
        }
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be one of {list(valid)}, got {getattr(self, name)!r}")
        unsupported = {
            "importance_sampling_level": self.importance_sampling_level != "token",
            "off_policy_mask_threshold": self.off_policy_mask_threshold is not None,
            "top_entropy_quantile": self.top_entropy_quantile < 1.0,
            "use_adaptive_entropy": self.use_adaptive_entropy,
            "delta": self.delta is not None,
            "multi_objective_aggregation": self.multi_objective_aggregation != "sum_then_normalize",
        }
        bad = [name for name, is_set in unsupported.items() if is_set]
        if bad:
            raise ValueError(f"TGRLTrainer does not implement {bad}; leave them at TRL's defaults")
        if self.p_min is None:
            self.p_min = 1e-4 if self.expert_ratio in ("shaped", "raw_p") else 0.0
        for name in ("expert_coef", "expert_coef_end", "expert_neg_p_floor", "p_min"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.teacher_is_cap <= 0:
            raise ValueError(f"teacher_is_cap must be > 0, got {self.teacher_is_cap}")
        if self.adv_group == "on_only" and self.scale_rewards == "batch":
            raise ValueError("adv_group 'on_only' needs scale_rewards 'group' or 'none'")
        if self.inject_mode != "never":
            if not 1 <= self.n_exp < self.num_generations:
                raise ValueError(f"n_exp must be in [1, num_generations - 1], got {self.n_exp}")
            local = self.per_device_train_batch_size * self.steps_per_generation
            if local % self.num_generations:
                raise ValueError(
                    f"each rank must hold whole groups: per_device_train_batch_size * steps_per_generation "
                    f"({local}) must be divisible by num_generations ({self.num_generations})"
                )


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


class TGRLTrainer(CheckpointKeyFixMixin, GRPOTrainer):
    """GRPOTrainer with expert trajectories in the group and a token-level expert loss.

    The only changes w.r.t. GRPOTrainer (everything else, incl. sampling, vLLM, DeepSpeed, rewards,
    checkpoints, is inherited):

    1. ``_generate_single_turn``: the last ``n_exp`` slots of each group whose prompt has an expert
       trajectory (``expert_text`` column) hold the tokenized trajectory + end-of-turn token instead of
       a rollout; with inject_mode 'always' those slots are not generated at all (HF generate and vLLM
       colocate without tensor parallelism; vLLM server/TP generate all and replace). Rewards and group
       advantages then include the expert, as in LUFFY. Vision special tokens are suppressed in every
       rollout (HF ``suppress_tokens``, vLLM ``bad_words``).
    2. ``_generate_and_score_completions``: adds ``is_expert`` (B,), the stop-gradient token weights
       (``expert_weights``, ``onpolicy_weights``), optional on-policy-only advantages and the online
       group filter (``row_keep``), and logs the metrics below.
    3. ``_compute_loss``: on-policy tokens get TRL's PPO-clip term (KL only there); expert tokens get
       -A * w_t * f(pi_theta) with no ratio to pi_old and no clip (token_weights.tgrl_loss_terms).

    Metrics: one JSON line per logged step in <output_dir>/metrics.jsonl; every key is documented in
    docs/metrics.md next to the plot panel that shows it.
    """

    _tag_names = ["trl", "grpo", "tgrl"]

    def __init__(
        self, model, reward_funcs, args: TGRLConfig, train_dataset=None, processing_class=None, **kwargs
    ):
        if not isinstance(args, TGRLConfig):
            raise TypeError("TGRLTrainer needs a TGRLConfig")
        check_trl_version()  # private TRL internals below: refuse an untested TRL unless overridden
        for unsupported in ("tools", "rollout_func", "environment_factory"):
            if kwargs.get(unsupported):
                raise ValueError(f"TGRLTrainer does not support {unsupported}")
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        args.generation_kwargs = vision_guard(args.generation_kwargs, tokenizer, args.use_vllm)
        super().__init__(
            model,
            reward_funcs,
            args=args,
            train_dataset=train_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        check_trainer_attributes(self)
        # rollouts and trainer must agree on image tokens (tgrl/pixels.py)
        self._pixel_fit = pixel_fit_of(self.processing_class)
        if self.use_vllm:
            guard_vllm_prompt_lengths(self.vllm_generation)

        im_end = self._tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.expert_eos_id = im_end if im_end in self.eos_token_ids else self.eos_token_ids[0]
        names = [getattr(f, "__name__", "") for f in self.reward_funcs]
        self._acc_index = names.index(accuracy_reward.__name__) if accuracy_reward.__name__ in names else None
        if args.inject_mode == "on_fail" and self._acc_index is None:
            raise ValueError(
                "inject_mode 'on_fail' needs the 'accuracy' reward function (the gate counts correct "
                "rollouts)"
            )
        if args.inject_mode != "never" and train_dataset is not None:
            self._check_expert_texts(train_dataset)
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        token_pass = (
            args.inject_mode != "never" or args.onpolicy_token_weight != "none" or args.vis_dep_diag_every
        )
        if (
            plugin is not None
            and plugin.zero_stage == 3
            and token_pass
            and not args.ds3_gather_for_generation
        ):
            # the token pass runs rank-local forwards of different sizes: only safe on gathered weights
            raise ValueError("ZeRO-3 needs ds3_gather_for_generation: true for the TGRL token pass")
        if plugin is not None and args.grad_share_every:
            # autograd.grad on parameters DeepSpeed partitions and hooks is not something we can vouch for
            raise ValueError("grad_share_every needs a run without DeepSpeed; set grad_share_every: 0")
        self.add_callback(JsonlMetricsCallback())
        quiet_console(self, every=max(1, 10 // max(1, int(args.logging_steps))))
        self._generation_rows = None  # the generation batch's dataset rows, for _generate_single_turn
        self._expert_rows = None  # (B,) bool, set by _generate_single_turn
        self._timing = defaultdict(float)
        self._experience_seconds = 0.0
        self._last_log = None  # (perf_counter, global_step) for time/step

    # ---------------------------------------------------------------------------------------------
    # expert trajectories

    def _check_expert_texts(self, dataset) -> None:
        """Fail early (naming a row) on trajectories the rollout budget cannot hold (filter F2 should
        have rejected them; see expert_overlong) or that contain a vision special token."""
        texts = dataset["expert_text"] if "expert_text" in dataset.column_names else []
        ids = dataset["id"] if "id" in dataset.column_names else list(range(len(texts)))
        if not any(texts):
            raise ValueError(
                f"inject_mode is {self.args.inject_mode!r} but no training row has an expert trajectory "
                "(meta.expert). Build the filtered teacher set first, or set inject_mode: never (GRPO)"
            )
        vision = set(vision_token_ids(self._tokenizer))
        limit = self.max_completion_length - 1  # the end-of-turn token is appended
        chunk = 1024  # lengths only: holding every tokenized trajectory would cost GBs at ViRL39K scale
        for start in range(0, len(texts), chunk):
            batch = [t or "" for t in texts[start : start + chunk]]
            encoded = self._tokenizer(batch, add_special_tokens=False)["input_ids"]
            for row_id, text, tokens in zip(ids[start : start + chunk], batch, encoded, strict=True):
                if not text:
                    continue
                if len(tokens) > limit and self.args.expert_overlong == "error":
                    raise ValueError(
                        f"row {row_id}: expert trajectory has {len(tokens) + 1} tokens with end-of-turn, "
                        f"more "
                        f"than max_completion_length={self.max_completion_length}. Fix: filter with the same "
                        "max length (F2), or set expert_overlong: truncate / drop"
                    )
                if vision.intersection(tokens):
                    raise ValueError(f"row {row_id}: expert trajectory contains a vision special token")

    @lru_cache(maxsize=256)  # noqa: B019 - one trainer per process; a generation batch's texts repeat G times
    def _full_expert_ids(self, text: str) -> tuple[int, ...]:
        return (*self._tokenizer(text, add_special_tokens=False)["input_ids"], self.expert_eos_id)

    @lru_cache(maxsize=256)  # noqa: B019 - as above
    def _fact_positions(self, text: str) -> tuple[int, ...]:
        """Token positions of the visual facts an expert trajectory states, in the expert slot's layout."""
        return tuple(fact_token_positions(self._tokenizer, text))

    def _expert_fact_mask(self, inputs, exp_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) bool: the fact tokens of expert rows whose problem has ground-truth facts (synthetic
        scenes)."""
        fact_mask = torch.zeros_like(exp_mask)
        for i in exp_mask.any(1).nonzero().flatten().tolist():
            if inputs[i].get("facts"):
                positions = [
                    j for j in self._fact_positions(inputs[i]["expert_text"]) if j < fact_mask.size(1)
                ]
                fact_mask[i, positions] = True
        return fact_mask & exp_mask

    def _expert_too_long(self, text: str) -> bool:
        return len(self._full_expert_ids(text)) > self.max_completion_length

    def _expert_ids(self, text: str) -> tuple[int, ...]:
        """The expert slot's completion: policy tokens of the trajectory + end-of-turn (truncated only
        with expert_overlong 'truncate')."""
        return self._full_expert_ids(text)[: self.max_completion_length]

    def _expert_slots(self, rows: list[dict]) -> list[int]:
        """Local row indices of the expert slots: the last n_exp rows of each group with a trajectory."""
        G, n_exp = self.num_generations, self.args.n_exp
        if len(rows) % G:
            raise RuntimeError(f"generation batch of {len(rows)} rows is not whole groups of {G}")
        slots = []
        for start in range(0, len(rows), G):
            group = rows[start : start + G]
            if len({r.get("id") for r in group}) != 1:
                raise RuntimeError(
                    "a group spans different prompts: groups must be consecutive and whole per rank"
                )
            text = group[0].get("expert_text")
            if text and not (self.args.expert_overlong == "drop" and self._expert_too_long(text)):
                slots.extend(range(start + G - n_exp, start + G))
        return slots

    def _can_skip_generation(self, multimodal_fields: dict) -> bool:
        """Whether the expert slots can be left out of generation (not just replaced afterwards)."""
        if self.use_vllm:  # server mode needs n rollouts per prompt; TP slices assume equal counts per rank
            return self.vllm_mode == "colocate" and self.args.vllm_tensor_parallel_size == 1
        return set(multimodal_fields) <= _ROW_KEYS

    @staticmethod
    def _select_prompts(keep: list[int], prompt_ids, images, multimodal_fields):
        """The generation inputs of the rows ``keep`` (Qwen-VL layout: pixel rows split by image grid)."""
        sub_fields = {}
        if "pixel_values" in multimodal_fields:
            num_images = [len(im) if im else 0 for im in images]
            split = split_pixel_values_by_grid({**multimodal_fields, "num_images": num_images})
            sub_fields["pixel_values"] = torch.cat([split["pixel_values"][i] for i in keep])
            sub_fields["image_grid_thw"] = torch.cat([split["image_grid_thw"][i] for i in keep])
        if "mm_token_type_ids" in multimodal_fields:
            sub_fields["mm_token_type_ids"] = [multimodal_fields["mm_token_type_ids"][i] for i in keep]
        sub_images = None if images is None else [images[i] for i in keep]
        return [prompt_ids[i] for i in keep], sub_images, sub_fields

    def _generate_single_turn(
        self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False
    ):
        rows, cfg = self._generation_rows, self.args
        start = time.perf_counter()
        if cfg.inject_mode == "never" or not self.model.training:
            out = super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
            self._timing["generate"] += time.perf_counter() - start
            return out
        if rows is None or len(rows) != len(prompt_ids):
            # Never degrade to GRPO silently: the expert slots need the batch's dataset rows, aligned with
            # the prompts (how TRL 1.16 calls this method).
            got = "no dataset rows" if rows is None else f"{len(rows)} dataset rows"
            raise RuntimeError(
                f"TGRL cannot place expert trajectories: {got} for {len(prompt_ids)} prompts in "
                "_generate_single_turn (the trainer was written against TRL 1.16, which passes one prompt "
                "per row of the generation batch). Training on would silently be plain GRPO. Fix: install "
                "the pinned trl version, or set inject_mode: never to train GRPO on purpose"
            )
        slots = self._expert_slots(rows)
        n = len(prompt_ids)
        if cfg.inject_mode == "always" and slots and self._can_skip_generation(multimodal_fields):
            keep = sorted(set(range(n)) - set(slots))
            sub = self._select_prompts(keep, prompt_ids, images, multimodal_fields)
            sub_ids, sub_logprobs = super()._generate_single_turn(
                *sub, num_generations - cfg.n_exp, has_tool_images
            )
            completion_ids = [None] * n
            logprobs = None if sub_logprobs is None else [None] * n
            for j, i in enumerate(keep):
                completion_ids[i] = sub_ids[j]
                if logprobs is not None:
                    logprobs[i] = sub_logprobs[j]
            generated = len(keep)
        else:
            completion_ids, logprobs = super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
            completion_ids, logprobs = list(completion_ids), None if logprobs is None else list(logprobs)
            generated = n
            if cfg.inject_mode == "on_fail" and slots:
                slots = self._gate_slots(slots, rows, completion_ids)
        for i in slots:
            ids = self._expert_ids(rows[i]["expert_text"])
            completion_ids[i] = list(ids)
            if logprobs is not None:  # vLLM: no sampling log-prob for the expert; TRL maps NaN to IS ratio 1
                logprobs[i] = [float("nan")] * len(ids)
        is_expert = torch.zeros(n, dtype=torch.bool)
        is_expert[slots] = True
        self._expert_rows = is_expert
        self._timing["generate"] += time.perf_counter() - start
        self._timing["generated"] += generated
        return completion_ids, logprobs

    def _gate_slots(self, slots: list[int], rows: list[dict], completion_ids) -> list[int]:
        """on_fail: keep a group's expert slots only if at most inject_gate of its rollouts are correct."""
        G = self.num_generations
        texts = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
        correct = accuracy_reward(
            texts,
            [r["solution"] for r in rows],
            choices=[r.get("choices") for r in rows],
            answer_type=[r.get("answer_type") for r in rows],
        )
        expert_slots = set(
            slots
        )  # docs/design.md#53-groups: count the on-policy rollouts, not the slot about to be replaced
        failing = {
            g
            for g in range(len(rows) // G)
            if sum(correct[i] == 1.0 for i in range(g * G, (g + 1) * G) if i not in expert_slots)
            <= self.args.inject_gate
        }
        return [i for i in slots if i // G in failing]

    # ---------------------------------------------------------------------------------------------
    # experience: rewards, advantages, token quantities

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        start = time.perf_counter()
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._timing["score"] += time.perf_counter() - start
        self._last_completions = completions  # local rows
        self._last_rewards_per_func = rewards_per_func  # all ranks (gathered by TRL)
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        # fit images into the pixel budget before any processor sees them: vLLM and trainer get the same
        # pixels
        if self._pixel_fit is not None:
            fit_row_images(inputs, *self._pixel_fit)
        if not self.model.training:
            out = super()._generate_and_score_completions(inputs)
            out["is_expert"] = torch.zeros(
                out["completion_ids"].size(0), dtype=torch.bool, device=out["completion_ids"].device
            )
            self._add_token_counts(out)
            return out
        start = time.perf_counter()
        self._timing.clear()
        self._generation_rows, self._expert_rows = inputs, None
        try:
            out = super()._generate_and_score_completions(inputs)
        finally:
            self._generation_rows = None
        device = out["completion_ids"].device
        n = out["completion_ids"].size(0)
        is_expert = self._expert_rows if self._expert_rows is not None else torch.zeros(n, dtype=torch.bool)
        out["is_expert"] = is_expert.to(device)
        self._adjust_advantages(out)
        self._add_token_counts(out)
        token_start = time.perf_counter()
        self._token_pass(out, inputs)
        self._timing["token_pass"] = time.perf_counter() - token_start
        self._log_experience(out, inputs)
        every = self.args.log_completions_every
        if every > 0 and self.state.global_step % every == 0:
            self._log_completions(out, inputs)
        seconds = time.perf_counter() - start
        self._experience_seconds += seconds
        metrics = self._metrics["train"]
        metrics["time/experience"].append(seconds)
        for key in ("generate", "score", "token_pass"):
            metrics[f"time/{key}"].append(self._timing[key])
        if self.args.log_data_order:
            ids = gather_object([row.get("id") for row in inputs[:: self.num_generations]])
            if self.accelerator.is_main_process:
                path = os.path.join(self.args.output_dir, DATA_ORDER_FILE)
                append_jsonl(path, [{"step": self.state.global_step, "ids": ids}], fsync=False)
        return out

    def _log_completions(self, out, inputs) -> None:
        """Append this batch's completions to ``completions.jsonl`` (main process; every rank's rows): what
        a person reads in the trajectory report. Token s_t / w_t are the values this step's token pass
        used (None where it computed none: s_t only on the rows it perturbed, w_t only on expert rows)."""
        tok = self._tokenizer
        quantities = getattr(self, "_last_token_quantities", None) or {}
        s, s_mask, w = quantities.get("s"), quantities.get("s_mask"), quantities.get("w")
        n = out["completion_ids"].size(0)
        local = self._process_slice(n)
        rewards = self._summed_rewards()[local]
        per_func = self._last_rewards_per_func[local]
        rows = []
        for i in range(n):
            length = int(out["completion_mask"][i].sum())
            ids = out["completion_ids"][i, :length].tolist()
            text = completion_text(self._last_completions[i])
            facts = inputs[i].get("facts") or ""
            row = {
                "step": self.state.global_step,
                "id": inputs[i].get("id"),
                "is_expert": bool(out["is_expert"][i]),
                "text": text,
                "tokens": [tok.decode([t]) for t in ids],
                "reward": _finite(rewards[i].item()),
                "accuracy": None if self._acc_index is None else _finite(per_func[i, self._acc_index].item()),
                "fact_accuracy": _finite(_fact_accuracy(text, facts)) if facts else None,
                "advantage": _finite(out["advantages"].reshape(n, -1)[i, 0].item()),
                "s": None,
                "w": None,
            }
            if s is not None and bool(s_mask[i].any()):
                row["s"] = [round(v, 4) for v in s[i, :length].tolist()]
            if w is not None and row["is_expert"]:
                row["w"] = [round(v, 4) for v in w[i, :length].tolist()]
            rows.append(row)
        rows = gather_object(rows)
        if self.accelerator.is_main_process:
            append_jsonl(os.path.join(self.args.output_dir, COMPLETIONS_FILE), rows, fsync=False)

    def _process_slice(self, n_local: int) -> slice:
        rank = self.accelerator.process_index
        return slice(rank * n_local, (rank + 1) * n_local)

    def _adjust_advantages(self, out) -> None:
        """adv_group 'on_only' and the online group filter; 'mixed' keeps TRL's advantages unchanged."""
        cfg, G = self.args, self.num_generations
        n = out["completion_ids"].size(0)
        rewards = self._summed_rewards()
        is_expert = self.accelerator.gather(out["is_expert"])
        if cfg.adv_group == "on_only":
            adv = group_advantages(
                rewards, G, std_norm=cfg.scale_rewards != "none", on_policy_mask=~is_expert.bool()
            )
            out["advantages"] = adv[self._process_slice(n)].to(out["advantages"].dtype)
            logged = self._logs["advantages"]  # TRL's completion table logged the mixed-group values
            for _ in range(min(len(adv), len(logged))):
                logged.pop()
            logged.extend(adv.tolist())
        if cfg.online_group_filter:
            r = rewards.view(-1, G)
            hi = torch.nan_to_num(r, nan=-math.inf).amax(1)
            lo = torch.nan_to_num(r, nan=math.inf).amin(1)
            tied = hi <= lo  # all valid rewards equal (or none valid)
            keep = (~tied).repeat_interleave(G)[self._process_slice(n)].to(out["completion_mask"].dtype)
            out["row_keep"] = keep
            mask = out["completion_mask"] * keep.unsqueeze(1)
            out["num_items_in_batch"] = self.accelerator.gather(mask.sum()).sum()
            self._metrics["train"]["groups/dropped"].append(tied.sum().item())

    def _summed_rewards(self) -> torch.Tensor:
        """(N,) weighted sum of the reward functions over all ranks (as TRL sums them); NaN where every
        function returned None (unscorable rows: no advantage, left out of every reward metric)."""
        rewards_per_func = self._last_rewards_per_func
        rewards = (rewards_per_func * self.reward_weights.to(rewards_per_func.device).unsqueeze(0)).nansum(
            dim=1
        )
        rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
        return rewards

    def _add_token_counts(self, out) -> None:
        """All-rank counts of the generation batch's on-policy and expert loss tokens: TRL's
        num_items_in_batch split by token set, the dapo normaliser of each term under
        expert_loss_norm 'separate' (and of the KL, which is on on-policy tokens only)."""
        mask = out["completion_mask"]
        if "row_keep" in out:
            mask = mask * out["row_keep"].unsqueeze(1)
        is_exp = out["is_expert"].to(mask.dtype).unsqueeze(1)
        local = torch.stack([(mask * (1 - is_exp)).sum(), (mask * is_exp).sum()]).float()
        total = self.accelerator.reduce(local, reduction="sum")
        out["num_on_tokens"], out["num_exp_tokens"] = total[0], total[1]

    def _forward_rows(self, model, out, rows: list[int], perturb: bool, compute_entropy: bool):
        """No-grad log-probs (and entropies) of completion tokens for the given local rows, with the
        clean or the perturbed image (docs/design.md#54-token-quantities). Returns (B, T) tensors, zero
        outside ``rows``."""
        idx = torch.tensor(rows, dtype=torch.long, device=out["completion_ids"].device)
        input_ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)[idx]
        attention_mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)[idx]
        kwargs = {}
        if "pixel_values" in out:
            split = split_pixel_values_by_grid(out)
            pixel_values = torch.cat([split["pixel_values"][i] for i in rows])
            grid = torch.cat([split["image_grid_thw"][i] for i in rows])
            if perturb:
                image_processor = self.processing_class.image_processor
                rng = np.random.default_rng(
                    [self.args.seed, self.state.global_step, self.accelerator.process_index]
                )
                pixel_values = perturb_pixel_values(
                    pixel_values.cpu(),
                    grid.cpu(),
                    self.args.perturb_mode,
                    self.args.perturb_prob,
                    rng,
                    image_mean=image_processor.image_mean,
                    image_std=image_processor.image_std,
                    patch_size=image_processor.patch_size,
                    temporal_patch_size=image_processor.temporal_patch_size,
                    merge_size=image_processor.merge_size,
                ).to(out["pixel_values"].device)
            kwargs.update(
                pixel_values=pixel_values,
                image_grid_thw=grid,
                num_images=[out["num_images"][i] for i in rows],
            )
        if "mm_token_type_ids" in out:
            kwargs["mm_token_type_ids"] = out["mm_token_type_ids"][idx]
        logps, entropies, _ = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            out["completion_ids"].size(1),
            batch_size=self.args.per_device_train_batch_size,
            compute_entropy=compute_entropy,
            **kwargs,
        )
        full_logps = torch.zeros_like(out["completion_mask"], dtype=logps.dtype)
        full_logps[idx] = logps
        full_entropy = None
        if compute_entropy:
            full_entropy = torch.zeros_like(full_logps)
            full_entropy[idx] = entropies
        return full_logps, full_entropy

    @torch.no_grad()
    def _token_pass(self, out, inputs) -> None:
        """Stop-gradient token quantities under pi_old (docs/design.md#54-token-quantities): p_t, s_t, then
        w_t and u_t.

        Forwards run only on the rows that need them (expert rows; on-policy rows only for on-policy
        weighting or the periodic diagnostic). Every collective below depends on the config alone, never
        on the local rows, so ranks with and without expert rows stay in step (ZeRO-3: one gather).
        """
        cfg = self.args
        guided = cfg.inject_mode != "never"
        weigh_on = cfg.onpolicy_token_weight != "none"
        diag = cfg.vis_dep_diag_every > 0 and self.state.global_step % cfg.vis_dep_diag_every == 0
        self._last_token_quantities = {}  # this step's s_t / w_t for the completions log (none yet)
        if not (guided or weigh_on or diag):
            return
        extra = {
            "pixel_attention_mask",
            "spatial_shapes",
            "image_sizes",
            "token_type_ids",
            "image_position_ids",
        } & set(out)
        if extra:
            raise NotImplementedError(
                f"the token pass supports the Qwen-VL input layout; got {sorted(extra)}"
            )
        is_expert = out["is_expert"].bool()
        mask = out["completion_mask"].bool()
        plan = plan_token_pass(
            is_expert.tolist(),
            expert_weight=cfg.expert_token_weight if guided else None,
            onpolicy_weight=cfg.onpolicy_token_weight if weigh_on else None,
            diagnostic=diag,
            has_old_logps="old_per_token_logps" in out,
        )
        s_rows = plan.perturbed_rows
        s_for_exp = guided and cfg.expert_token_weight in NEEDS_VIS_DEP
        s_for_on = weigh_on and cfg.onpolicy_token_weight in NEEDS_VIS_DEP

        logp, entropy, s, s_mask = self._token_forwards(out, plan, mask)
        self._last_token_quantities = {"s": s if s_rows else None, "s_mask": s_mask, "w": None}
        if s_for_exp or s_for_on or diag:
            self._log_mean("vis_dep/expert", s, s_mask & is_expert.unsqueeze(1))
            self._log_mean("vis_dep/on_policy", s, s_mask & ~is_expert.unsqueeze(1))
        p = torch.exp(logp)
        weight_kwargs = dict(
            s=s,
            entropy=entropy,
            alpha=cfg.vis_dep_alpha,
            rho=cfg.vis_topk_rho,
            entropy_top=cfg.entropy_topk_frac,
            trust_tau=cfg.trust_region_tau,
            p_min=cfg.p_min,
        )
        if guided:
            exp_mask = mask & is_expert.unsqueeze(1)
            w, _ = expert_token_weights(cfg.expert_token_weight, mask=exp_mask, p=p, **weight_kwargs)
            out["expert_weights"] = w
            self._last_token_quantities["w"] = w
            self._log_expert_token_metrics(p, w, exp_mask, inputs)
            if cfg.expert_ratio == "teacher_is":
                out["expert_teacher_logps"] = self._teacher_logps(out, inputs)
        if weigh_on:
            on_mask = mask & ~is_expert.unsqueeze(1)
            u, _ = expert_token_weights(cfg.onpolicy_token_weight, mask=on_mask, p=p, **weight_kwargs)
            out["onpolicy_weights"] = u
            self._log_mean("onpolicy/w_mean", u, on_mask)

    def _token_forwards(self, out, plan: TokenPassPlan, mask: torch.Tensor):
        """The token pass's forwards under pi_old: log p_t (reused from TRL's old log-probs when it has
        them), entropies, and s_t on the rows the plan perturbs; (B, T) tensors, zeros elsewhere."""
        needs_entropy, s_rows = plan.needs_entropy, plan.perturbed_rows
        logp = torch.zeros_like(mask, dtype=torch.float32)
        entropy = torch.zeros_like(logp) if needs_entropy else None
        s_mask = torch.zeros_like(mask)
        s = torch.zeros_like(logp)
        with unwrap_model_for_generation(
            self.model_wrapped,
            self.accelerator,
            gather_deepspeed3_params=self.args.ds3_gather_for_generation,
            gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
        ) as model:
            if plan.reuse_old_logps:
                logp = out["old_per_token_logps"].float()
            elif plan.clean_rows:
                logp, entropy = self._forward_rows(
                    model, out, plan.clean_rows, perturb=False, compute_entropy=needs_entropy
                )
            if s_rows:
                logp_perturbed, _ = self._forward_rows(
                    model, out, s_rows, perturb=True, compute_entropy=False
                )
                s_mask[s_rows] = mask[s_rows]
                _, s = visual_dependency(logp, logp_perturbed, s_mask)
        return logp, entropy, s, s_mask

    def _log_expert_token_metrics(self, p, w, exp_mask, inputs) -> None:
        """expert/* metrics of one step (docs/metrics.md): p of all, low-p and fact tokens; weight stats."""
        cfg = self.args
        self._log_mean("expert/p_mean", p, exp_mask)
        self._log_mean("expert/p_below_0.01", (p < 0.01).float(), exp_mask)
        # the tokens that carry content: p_mean is dominated by template tokens at p ~ 1
        self._log_mean("expert/p_low", p, exp_mask & (p < 0.5))
        self._log_mean("expert/share_low", (p < 0.5).float(), exp_mask)
        self._log_mean("expert/p_fact", p, self._expert_fact_mask(inputs, exp_mask))
        self._log_mean("expert/w_zeroed", (p < cfg.p_min).float(), exp_mask)
        w_mean = self._log_mean("expert/w_mean", w, exp_mask)
        if w_mean is not None:
            self._log_mean("expert/w_std", (w - w_mean) ** 2, exp_mask, sqrt=True)
            local_max = w[exp_mask].max() if exp_mask.any() else torch.zeros((), device=w.device)
            self._metrics["train"]["expert/w_max"].append(
                self.accelerator.gather(local_max.reshape(1)).max().item()
            )

    def _teacher_logps(self, out, inputs) -> torch.Tensor:
        """(B, T) per-token teacher log-probs of expert rows (``expert_teacher_logprobs`` column,
        aligned with the policy tokens; the appended end-of-turn token gets 0)."""
        teacher = torch.zeros_like(out["completion_mask"], dtype=torch.float32)
        for i in out["is_expert"].nonzero().flatten().tolist():
            values = inputs[i].get("expert_teacher_logprobs")
            if not values:
                raise ValueError(
                    f"row {inputs[i].get('id')}: expert_ratio 'teacher_is' needs "
                    f"meta.expert.teacher_logprobs. "
                    "Fix: run data_prep/score_teacher_logprobs.py and train on its output"
                )
            n_tokens = len(self._full_expert_ids(inputs[i]["expert_text"]))
            if len(values) not in (n_tokens, n_tokens - 1):  # with or without the end-of-turn token
                raise ValueError(
                    f"row {inputs[i].get('id')}: {len(values)} teacher log-probs for an expert of {n_tokens} "
                    "policy tokens (another tokenizer, or a stale file). Fix: rerun "
                    "data_prep/score_teacher_logprobs.py with this policy"
                )
            values = torch.tensor(values[: teacher.size(1)], dtype=torch.float32)
            teacher[i, : values.numel()] = values
        return teacher

    def _global_mean(self, x: torch.Tensor, mask: torch.Tensor) -> float | None:
        mask = mask.to(x.dtype)
        totals = self.accelerator.reduce(
            torch.stack([(torch.nan_to_num(x) * mask).sum(), mask.sum()]), reduction="sum"
        )
        return None if totals[1].item() == 0 else (totals[0] / totals[1]).item()

    def _log_mean(
        self, key: str, x: torch.Tensor, mask: torch.Tensor, sqrt: bool = False, mode: str = "train"
    ):
        """Log the all-rank mean of ``x`` over ``mask`` (nothing when the mask is empty everywhere)."""
        value = self._global_mean(x, mask)
        if value is not None:
            self._metrics[mode][key].append(math.sqrt(max(value, 0.0)) if sqrt else value)
        return value

    def _log_experience(self, out, inputs) -> None:
        """The docs/design.md#58-diagnostics metrics of one generation batch, over all ranks."""
        metrics, G = self._metrics["train"], self.num_generations
        rewards_per_func = self._last_rewards_per_func
        rewards = self._summed_rewards()
        is_exp = self.accelerator.gather(out["is_expert"]).bool()
        on = ~is_exp

        def mean_of(x, sel, key):
            values = x[sel & ~torch.isnan(x)]
            if values.numel():
                metrics[key].append(values.float().mean().item())

        mean_of(rewards, on, "reward/on_policy")
        mean_of(rewards, is_exp, "reward/expert")
        if self._acc_index is not None:
            acc = rewards_per_func[:, self._acc_index]
            mean_of(acc, on, "accuracy/on_policy")
            mean_of(acc, is_exp, "accuracy/expert")
            correct = ((acc >= 1.0) & on).view(-1, G).sum(1)
            n_on = on.view(-1, G).sum(1)
            metrics["groups/n"].append(float(n_on.numel()))
            metrics["groups/solve_none"].append((correct == 0).sum().item())
            metrics["groups/solve_all"].append((correct == n_on).sum().item())
        metrics["inject/rate"].append(is_exp.view(-1, G).any(1).float().mean().item())
        generated = self._timing.get("generated", float(out["completion_ids"].size(0)))
        metrics["inject/generated"].append(
            self.accelerator.reduce(torch.tensor(generated, device=rewards_per_func.device), "sum").item()
        )
        adv = self.accelerator.gather(out["advantages"].reshape(out["advantages"].size(0), -1)[:, 0])
        for name, sel in (("on_policy", on), ("expert", is_exp)):
            if sel.any():
                metrics[f"adv/{name}_mean"].append(adv[sel].mean().item())
                metrics[f"adv/{name}_std"].append(adv[sel].std().item() if sel.sum() > 1 else 0.0)
        lengths = self.accelerator.gather(out["completion_mask"].sum(1).float())
        mean_of(lengths, on, "completion_length")
        mean_of(lengths, is_exp, "completion_length/expert")
        facts = [row.get("facts") or "" for row in inputs]
        if any(facts):
            texts = [completion_text(c) for c in self._last_completions]
            local = [_fact_accuracy(t, f) for t, f in zip(texts, facts, strict=True)]
            fact = self.accelerator.gather(
                torch.tensor(local, dtype=torch.float32, device=rewards_per_func.device)
            )
            mean_of(fact, on, "fact_accuracy")
            mean_of(fact, is_exp, "fact_accuracy/expert")

    # ---------------------------------------------------------------------------------------------
    # THE LOSS

    def _compute_loss(self, model, inputs):
        """docs/design.md#55-loss: PPO-clip on on-policy tokens, -A * w * f(pi_theta) on expert tokens
        (tgrl_loss_terms)."""
        logps, entropies = self._policy_logps_and_entropies(model, inputs)
        completion_mask = inputs["completion_mask"]
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        rows = None
        if "row_keep" in inputs:  # online group filter: dropped groups leave loss and normaliser
            mask = mask * inputs["row_keep"].unsqueeze(1)
            rows = inputs["row_keep"].bool()
        old_logps = inputs.get("old_per_token_logps")
        old_logps = logps.detach() if old_logps is None else old_logps
        onpolicy_weights = inputs.get("onpolicy_weights")
        if self.use_vllm and self.vllm_importance_sampling_correction:  # TRL's truncated IS, on-policy tokens
            ratio = inputs["importance_sampling_ratio"].expand_as(logps)
            onpolicy_weights = ratio if onpolicy_weights is None else onpolicy_weights * ratio
        is_expert = inputs.get("is_expert")
        row_is_expert = torch.zeros(mask.size(0), dtype=torch.bool, device=mask.device)
        if is_expert is not None:
            row_is_expert = is_expert.bool()

        mode = "train" if self.model.training else "eval"
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        coef = self._expert_coef()
        cfg = self.args
        terms = tgrl_loss_terms(
            logps,
            old_logps,
            inputs["advantages"],
            mask,
            expert_mask=row_is_expert,
            expert_weights=inputs.get("expert_weights"),
            onpolicy_weights=onpolicy_weights,
            expert_ratio=cfg.expert_ratio,
            gamma=cfg.expert_gamma,
            teacher_logp=inputs.get("expert_teacher_logps"),
            teacher_is_cap=cfg.teacher_is_cap,
            neg_p_floor=cfg.expert_neg_p_floor,
            expert_coef=coef,
            expert_loss_norm=cfg.expert_loss_norm,
            eps_low=self.epsilon_low,
            eps_high=self.epsilon_high,
            on_policy_clip=cfg.on_policy_clip,
            ref_logp=inputs.get("ref_per_token_logps") if self.beta != 0.0 else None,
            beta=self.beta,
            kl_is_correction=cfg.use_bias_correction_kl,
            loss_agg=LOSS_AGG[self.loss_type],
            max_len=self.max_completion_length,
            rows=rows,
            **self._token_counts(inputs, mode, accumulation),
        )
        # TRL: the dapo normaliser already spans the accumulation window; the other types divide by it
        scale = 1.0 if self.loss_type == "dapo" else 1.0 / accumulation
        loss = terms.total * scale
        on_tokens = mask.bool() & ~row_is_expert.unsqueeze(1)
        if (
            self.entropy_coef != 0.0
        ):  # TRL's bonus (mean entropy, scaled for accumulation), on-policy tokens only
            loss = loss - self.entropy_coef * masked_mean(entropies, on_tokens) / accumulation
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * self._last_aux_loss / accumulation
        if mode == "train" and self._grad_share_due():
            self._log_grad_share(model, terms, scale)
        self._log_loss_metrics(terms.metrics, mode, logps, entropies, completion_mask, row_is_expert, coef)
        return loss

    def _policy_logps_and_entropies(self, model, inputs):
        """Per-token log-probs and entropies of the completions under the current policy (with gradient)."""
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        logps, entropies, self._last_aux_loss = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            inputs["completion_ids"].size(1),
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            **{key: inputs.get(key) for key in _MODEL_INPUT_KEYS},
        )
        return logps, entropies

    def _token_counts(self, inputs, mode: str, accumulation: float) -> dict:
        """TRL's dapo normaliser (tokens of the whole generation batch over all ranks, rescaled to one
        accumulation window) for the joint mean, the on-policy and the expert tokens. Other loss types
        normalise per micro-batch and need no counts."""
        if self.loss_type != "dapo":
            return {}
        scale = 1.0 / self.accelerator.num_processes
        if mode == "train":
            scale *= accumulation / self.args.steps_per_generation
        joint = inputs["num_items_in_batch"].clamp(min=1.0)
        return {
            "num_tokens": joint * scale,
            "num_on_tokens": inputs.get("num_on_tokens", joint).clamp(min=1.0) * scale,
            "num_exp_tokens": inputs.get("num_exp_tokens", joint).clamp(min=1.0) * scale,
        }

    def _expert_coef(self) -> float:
        cfg = self.args
        return expert_coef_at(
            self.state.global_step,
            self.state.max_steps or cfg.max_steps,
            cfg.expert_coef,
            cfg.expert_coef_schedule,
            cfg.expert_coef_end,
            cfg.expert_coef_warmup_steps,
        )

    def _grad_share_due(self) -> bool:
        every = self.args.grad_share_every
        return every > 0 and self.state.global_step % every == 0 and self.args.inject_mode != "never"

    def _log_grad_share(self, model, terms, scale: float) -> None:
        """Gradient norms of the on-policy and the expert term on this micro-batch
        (docs/design.md#58-diagnostics): two extra backward passes over the retained graph; the main backward
        is unchanged."""
        params = [p for p in model.parameters() if p.requires_grad]

        def flat_grad(term: torch.Tensor) -> torch.Tensor:
            if not term.requires_grad:
                return torch.zeros((), device=term.device)
            grads = torch.autograd.grad(term * scale, params, retain_graph=True, allow_unused=True)
            return torch.cat([g.reshape(-1) for g in grads if g is not None] or [torch.zeros(1)])

        g_on, g_exp = flat_grad(terms.on_policy), flat_grad(terms.expert)
        norm_on, norm_exp = g_on.norm().item(), g_exp.norm().item()
        metrics = self._metrics["train"]
        metrics["grad/norm_on_policy"].append(norm_on)
        metrics["grad/norm_expert"].append(norm_exp)
        if norm_on + norm_exp > 0:
            metrics["grad/expert_share"].append(norm_exp / (norm_on + norm_exp))
        if norm_on > 0 and norm_exp > 0 and g_on.numel() == g_exp.numel():
            metrics["grad/cos"].append((g_on @ g_exp).item() / (norm_on * norm_exp))

    def _log_loss_metrics(self, stats, mode, logps, entropies, completion_mask, row_is_expert, coef) -> None:
        """All-rank, token-weighted means of tgrl_loss_terms' per-micro-batch statistics, plus entropy and
        the current policy's p on expert tokens (diagnostics over every completion token, filtered
        groups included)."""
        valid = completion_mask.bool()
        on_mask = valid & ~row_is_expert.unsqueeze(1)
        exp_mask = valid & row_is_expert.unsqueeze(1)
        self._log_mean("entropy", entropies.detach(), on_mask, mode=mode)
        self._log_mean("entropy/expert", entropies.detach(), exp_mask, mode=mode)
        self._log_mean("expert/p_theta_mean", torch.exp(logps.detach()), exp_mask, mode=mode)
        on_keys = {
            "clip_ratio/low_mean": "clip_low",
            "clip_ratio/high_mean": "clip_high",
            "clip_ratio/region_mean": "clip_region",
            "loss/on_policy": "loss_on",
        }
        if self.beta != 0.0:
            on_keys["kl"] = "kl"
        n_on, n_exp = stats["n_on_tokens"], stats["n_exp_tokens"]
        local = {key: stats[name] * n_on for key, name in on_keys.items()}
        local.update({"loss/expert": stats["loss_exp"] * n_exp, "expert/bounded": stats["n_exp_bounded"]})
        local.update({"#on": n_on, "#exp": n_exp})
        device = logps.device
        reduced = self.accelerator.reduce(torch.tensor(list(local.values()), device=device), reduction="sum")
        totals = dict(zip(local, reduced.tolist(), strict=True))
        metrics = self._metrics[mode]
        if totals["#on"] > 0:
            for key in on_keys:
                metrics[key].append(totals[key] / totals["#on"])
        if totals["#exp"] > 0:
            metrics["loss/expert"].append(totals["loss/expert"] / totals["#exp"])
            metrics["expert/bounded"].append(totals["expert/bounded"] / totals["#exp"])
        if mode == "train" and self.args.inject_mode != "never":
            metrics["expert/coef"].append(coef)

    # ---------------------------------------------------------------------------------------------
    # timing

    def training_step(self, model, inputs, num_items_in_batch):
        if self._last_log is None:
            self._last_log = (time.perf_counter(), self.state.global_step)
        return super().training_step(model, inputs, num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training and self._last_log is not None and "loss" in logs:
            now, step = time.perf_counter(), self.state.global_step
            last_time, last_step = self._last_log
            if step > last_step:
                per_step = (now - last_time) / (step - last_step)
                logs["time/step"] = per_step
                logs["time/update"] = per_step - self._experience_seconds / (step - last_step)
            self._last_log, self._experience_seconds = (now, step), 0.0
        super().log(logs, start_time)


NEEDS_VIS_DEP = ("vis_dep", "vis_topk")  # token weights that read s_t (the perturbed-image forward)


@dataclass(frozen=True)
class TokenPassPlan:
    """Which rows of a generation batch the token pass forwards, and how (see :func:`plan_token_pass`)."""

    clean_rows: list[int]  # clean-image forward: p_t (and entropy) under pi_old
    perturbed_rows: list[int]  # perturbed-image forward: s_t
    needs_entropy: bool
    reuse_old_logps: bool  # TRL already ran the clean pi_old forward (old_per_token_logps): reuse it


def plan_token_pass(
    is_expert: list[bool],
    expert_weight: str | None,
    onpolicy_weight: str | None,
    diagnostic: bool,
    has_old_logps: bool,
) -> TokenPassPlan:
    """The forwards the token pass needs (docs/design.md#54-token-quantities): p_t on the rows that get token
    weights (expert rows when guided, i.e. ``expert_weight`` is set; on-policy rows when ``onpolicy_weight``
    is set), s_t where a weight reads it or on every row on a ``diagnostic`` step, entropy only for
    'entropy_topk'. Nothing else is forwarded: a GRPO step without the diagnostic forwards no row."""
    experts = [i for i, e in enumerate(is_expert) if e]
    on_policy = [i for i, e in enumerate(is_expert) if not e]
    p_rows = set(experts if expert_weight else []) | set(on_policy if onpolicy_weight else [])
    s_rows = set(experts if diagnostic or expert_weight in NEEDS_VIS_DEP else [])
    s_rows |= set(on_policy if diagnostic or onpolicy_weight in NEEDS_VIS_DEP else [])
    needs_entropy = "entropy_topk" in (expert_weight, onpolicy_weight)
    return TokenPassPlan(
        clean_rows=sorted(p_rows | s_rows),
        perturbed_rows=sorted(s_rows),
        needs_entropy=needs_entropy,
        reuse_old_logps=has_old_logps and not needs_entropy,  # TRL's pi_old forward: identical values
    )


def expert_coef_at(
    step: int, max_steps: int, peak: float, schedule: str = "constant", end: float = 0.0, warmup: int = 0
) -> float:
    """The expert term's scale at ``step`` (CHORD-style mu schedule): linear warm-up from 0 over ``warmup``
    steps, then ``peak`` ('constant') or a 'linear' / 'cosine' decay from ``peak`` to ``end`` at
    ``max_steps``."""
    if schedule not in EXPERT_COEF_SCHEDULES:
        raise ValueError(
            f"expert_coef_schedule must be one of {list(EXPERT_COEF_SCHEDULES)}, got {schedule!r}"
        )
    if warmup > 0 and step < warmup:
        return peak * step / warmup
    if schedule == "constant":
        return peak
    progress = min(1.0, max(0.0, (step - warmup) / max(1, max_steps - warmup)))
    if schedule == "linear":
        return peak + (end - peak) * progress
    return end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def check_vllm_prompt_lengths(sent: list, returned: list | None) -> None:
    """Raise when vLLM expanded a prompt to another length than the trainer's processor did.

    TRL sends vLLM the prompt ids our processor expanded (one ``<|image_pad|>`` per image token) plus the
    raw image; vLLM's own processor decides the image's token count from its pixel bounds. A different
    count means the rollout was generated from another prompt than the one the loss scores (TRL issues
    #6294, #6401): a crash later, or silently wrong rollouts. Checked on every generation (it costs a
    length comparison), so the first one already fails."""
    if returned is None:
        return
    if len(returned) != len(sent):
        raise RuntimeError(f"vLLM returned {len(returned)} prompts for {len(sent)} sent")
    for i, (ours, theirs) in enumerate(zip(sent, returned, strict=True)):
        if len(ours) != len(theirs):
            raise RuntimeError(
                f"vLLM expanded prompt {i} to {len(theirs)} tokens, the trainer's processor to {len(ours)}: "
                "vLLM resized an image with other pixel bounds than the trainer's processor, so the rollout "
                "does not belong to the prompt the loss scores. Fix: train through TGRLTrainer, which fits "
                "every image into the processor's budget first (tgrl/pixels.py), and keep "
                "min_pixels/max_pixels "
                "inside the checkpoint's own preprocessor_config.json bounds"
            )


def guard_vllm_prompt_lengths(vllm_generation) -> None:
    """Wrap TRL's ``VLLMGeneration.generate`` (whose prompt ids TRL discards) with
    :func:`check_vllm_prompt_lengths`."""
    generate = vllm_generation.generate

    def checked_generate(prompts, images, num_generations, profiler=None):
        out = generate(prompts=prompts, images=images, num_generations=num_generations, profiler=profiler)
        check_vllm_prompt_lengths(prompts, out[0])
        return out

    vllm_generation.generate = checked_generate


def vision_guard(generation_kwargs: dict | None, tokenizer, use_vllm: bool) -> dict:
    """Generation kwargs that forbid every vision special token in rollouts (a sampled <|image_pad|>
    crashes the next forward, docs/environment.md#8-generation-pitfall): HF ``suppress_tokens`` ids, or
    vLLM ``bad_words`` strings (SamplingParams tokenizes them; JSON-safe for server mode). User entries are
    kept."""
    kwargs = dict(generation_kwargs or {})
    if use_vllm:
        present = [
            t for t in VISION_SPECIAL_TOKENS if tokenizer.convert_tokens_to_ids(t) != tokenizer.unk_token_id
        ]
        kwargs["bad_words"] = sorted(set(kwargs.get("bad_words") or []) | set(present))
    else:
        kwargs["suppress_tokens"] = sorted(
            set(kwargs.get("suppress_tokens") or []) | set(vision_token_ids(tokenizer))
        )
    return kwargs


@lru_cache(maxsize=4096)
def _parse_facts(facts: str) -> dict:
    return json.loads(facts)


def _finite(value: float) -> float | None:
    """JSON has no NaN: unscorable rewards are logged as null."""
    return value if math.isfinite(value) else None


def _fact_accuracy(text: str, facts: str) -> float:
    if not facts:
        return float("nan")
    value = fact_accuracy(text, _parse_facts(facts))
    return float("nan") if value is None else value
