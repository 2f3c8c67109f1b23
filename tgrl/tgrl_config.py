"""The configs of a training run: TGRLConfig (TRL's GRPOConfig plus the TGRL switches,
docs/design.md#59-switches), beside the trainer as TRL keeps ``grpo_config.py`` beside ``grpo_trainer.py``,
and the script arguments of train/rl.py and train/sft.py (data, rewards, pixels). Every TGRL switch is a
reconstruction; each help string says where its default comes from."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from trl import GRPOConfig

from tgrl.perturb import MODES as PERTURB_MODES
from tgrl.token_weights import EXPERT_LOSS_NORMS, EXPERT_RATIOS, EXPERT_TOKEN_WEIGHTS
from tgrl.utils import UserError

# The loss aggregation (docs/design.md#55-loss) is TRL's `loss_type` (one switch): how each maps onto
# tgrl_loss_terms.
LOSS_AGG = {
    "dapo": "token_mean",
    "bnpo": "token_mean",
    "grpo": "seq_mean_token_mean",
    "dr_grpo": "seq_mean_token_sum_norm",
}
EXPERT_COEF_SCHEDULES = ("constant", "linear", "cosine")


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
            "Switched off (one logged line) under DeepSpeed."
        },
    )
    share_prompt_prefix: bool = field(
        default=False,
        metadata={
            "help": "Forward each distinct prompt once in the update and reuse its keys and values for "
            "every completion of its group (tgrl/prefix_sharing.py): the same log-probs up to rounding, "
            "a 2.3-3x faster update at 8 rollouts on the tiny tier. Qwen2-VL family, one process "
            "without a wrapper, no gradient checkpointing; elsewhere TRL's per-row forward runs (one line "
            "says why)."
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
        if self.share_prompt_prefix and self.gradient_checkpointing:
            raise ValueError(
                "share_prompt_prefix needs the KV cache, which gradient checkpointing turns off. Fix: set "
                "share_prompt_prefix false (the 7B recipes) or gradient_checkpointing false"
            )
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

    def expert_coef_at_step(self, step: int, max_steps: int | None = None) -> float:
        """The expert term's scale at ``step`` under this config's schedule (:func:`expert_coef_at`)."""
        return expert_coef_at(
            step,
            max_steps or self.max_steps,
            self.expert_coef,
            self.expert_coef_schedule,
            self.expert_coef_end,
            self.expert_coef_warmup_steps,
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
