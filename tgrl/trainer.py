"""TGRL: trajectory-guided RL for multimodal RLVR, as a small subclass of TRL's GRPOTrainer
(docs/design.md#5-the-tgrl-algorithm; the maths is in tgrl/token_weights.py as pure tensor functions).

* the expert slot of each group ......... TGRLTrainer._generate_single_turn
* advantages (on_only), group filter ..... TGRLTrainer._adjust_advantages
* visual dependency and token weights .... TGRLTrainer._token_pass
* THE LOSS ............................... TGRLTrainer._compute_loss -> token_weights.tgrl_loss_terms
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
from accelerate.utils import gather_object
from trl import GRPOTrainer
from trl.models.utils import unwrap_model_for_generation
from trl.trainer.utils import split_pixel_values_by_grid

from tgrl.diagnostics import TrainingDiagnostics
from tgrl.metrics import DATA_ORDER_FILE, JsonlMetricsCallback, quiet_console
from tgrl.modeling import end_of_turn_id, response_token_ids, vision_guard
from tgrl.perturb import perturb_with_processor
from tgrl.pixels import fit_row_images, pixel_fit_of
from tgrl.prefix_sharing import share_prompt_prefix_blocker, shared_prefix_logps_and_entropies
from tgrl.rewards import accuracy_reward
from tgrl.rl_data import check_expert_texts, stored_teacher_logps
from tgrl.tgrl_config import LOSS_AGG, TGRLConfig
from tgrl.token_weights import (
    NEEDS_VIS_DEP,
    LossSwitches,
    TokenPassPlan,
    expert_token_weights,
    group_advantages,
    masked_mean,
    plan_token_pass,
    tgrl_loss_terms,
    visual_dependency,
)
from tgrl.trl_compat import (
    CheckpointKeyFixMixin,
    adapt_to_deepspeed,
    check_trainer_attributes,
    check_trl_version,
    route_vllm_prompts,
)
from tgrl.utils import append_jsonl

__all__ = ["TGRLConfig", "TGRLTrainer"]

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
# What prefix sharing is handed (tgrl/prefix_sharing.py): those keys and the images per row.
_PREFIX_KEYS = _ROW_KEYS | {"num_images"}


@dataclass
class BatchState:
    """What the overrides of one generation batch hand each other. TRL's
    ``_generate_and_score_completions`` calls ``_generate_single_turn`` and ``_calculate_rewards``; the
    state is made fresh at its start and read by the metrics after it."""

    rows: list[dict] | None = None  # the batch's dataset rows, which the expert slots need
    is_expert: torch.Tensor | None = None  # (B,) bool, local rows; set where the slots are filled
    completions: list | None = None  # local completions, as the reward functions saw them
    rewards_per_func: torch.Tensor | None = None  # (N, F) over all ranks (TRL gathers them)
    token_quantities: dict = field(default_factory=dict)  # the token pass's s_t, its mask, w_t
    timing: defaultdict = field(default_factory=lambda: defaultdict(float))  # seconds, counts


class TGRLTrainer(TrainingDiagnostics, CheckpointKeyFixMixin, GRPOTrainer):
    """GRPOTrainer with expert trajectories in the group and a token-level expert loss (LUFFY-style slots,
    TGRL token weights). Everything else (sampling, vLLM, DeepSpeed, rewards, checkpoints) is TRL's.

    1. ``_generate_single_turn``: the last ``n_exp`` slots of each group with an expert trajectory hold the
       trajectory + end-of-turn instead of a rollout, so rewards and group advantages include the expert.
    2. ``_generate_and_score_completions``: ``is_expert``, the stop-gradient token weights, on-policy-only
       advantages and the online group filter (``row_keep``); the metrics of tgrl/diagnostics.py.
    3. ``_compute_loss``: PPO-clip on on-policy tokens, -A * w_t * f(pi_theta) on expert tokens, no ratio to
       pi_old and no clip (token_weights.tgrl_loss_terms).
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
        # rollouts and trainer must agree on image tokens (tgrl/pixels.py, tgrl/trl_compat.py)
        self._pixel_fit = pixel_fit_of(self.processing_class)
        if self.use_vllm:
            route_vllm_prompts(self.vllm_generation, getattr(self.processing_class, "image_token_id", None))

        if end_of_turn_id(self._tokenizer) not in self.eos_token_ids:
            raise ValueError(
                f"the tokenizer's end of turn {self._tokenizer.eos_token!r} is not a token generation stops "
                f"on ({self.eos_token_ids}), so expert and rollout completions would end differently. Fix: "
                "use the checkpoint's own generation_config.json"
            )
        names = [getattr(f, "__name__", "") for f in self.reward_funcs]
        self._acc_index = names.index(accuracy_reward.__name__) if accuracy_reward.__name__ in names else None
        if args.inject_mode == "on_fail" and self._acc_index is None:
            raise ValueError(
                "inject_mode 'on_fail' needs the 'accuracy' reward function (the gate counts correct "
                "rollouts)"
            )
        if args.inject_mode != "never" and train_dataset is not None:
            check_expert_texts(train_dataset, self._tokenizer, args)
        adapt_to_deepspeed(args, self.accelerator)
        self.add_callback(JsonlMetricsCallback())
        quiet_console(self, every=max(1, 10 // max(1, int(args.logging_steps))))
        self._batch = BatchState()
        self._experience_seconds = 0.0  # since the last logged step
        self._last_log = None  # (perf_counter, global_step) for time/step

    # ---------------------------------------------------------------------------------------------
    # expert trajectories

    @lru_cache(maxsize=256)  # noqa: B019 - one trainer per process; a generation batch's texts repeat G times
    def _full_expert_ids(self, text: str) -> tuple[int, ...]:
        return tuple(response_token_ids(self._tokenizer, text))

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
        rows, cfg, timing = self._batch.rows, self.args, self._batch.timing
        start = time.perf_counter()
        if cfg.inject_mode == "never" or not self.model.training:
            out = super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
            timing["generate"] += time.perf_counter() - start
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
        self._batch.is_expert = is_expert
        timing["generate"] += time.perf_counter() - start
        timing["generated"] += generated
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
        self._batch.timing["score"] += time.perf_counter() - start
        self._batch.completions, self._batch.rewards_per_func = completions, rewards_per_func
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        # fit images into the pixel budget before any processor sees them: vLLM and trainer get the same
        # pixels
        if self._pixel_fit is not None:
            fit_row_images(inputs, *self._pixel_fit)
        self._batch = BatchState(rows=inputs if self.model.training else None)
        if not self.model.training:
            out = super()._generate_and_score_completions(inputs)
            out["is_expert"] = torch.zeros(
                out["completion_ids"].size(0), dtype=torch.bool, device=out["completion_ids"].device
            )
            self._add_token_counts(out)
            return out
        start = time.perf_counter()
        out = super()._generate_and_score_completions(inputs)
        device = out["completion_ids"].device
        n = out["completion_ids"].size(0)
        is_expert = self._batch.is_expert
        out["is_expert"] = (torch.zeros(n, dtype=torch.bool) if is_expert is None else is_expert).to(device)
        self._adjust_advantages(out)
        self._add_token_counts(out)
        token_start = time.perf_counter()
        self._token_pass(out, inputs)
        self._batch.timing["token_pass"] = time.perf_counter() - token_start
        self._log_experience(out, inputs)
        every = self.args.log_completions_every
        if every > 0 and self.state.global_step % every == 0:
            self._log_completions(out, inputs)
        seconds = time.perf_counter() - start
        self._experience_seconds += seconds
        metrics = self._metrics["train"]
        metrics["time/experience"].append(seconds)
        for key in ("generate", "score", "token_pass"):
            metrics[f"time/{key}"].append(self._batch.timing[key])
        if self.args.log_data_order:
            ids = gather_object([row.get("id") for row in inputs[:: self.num_generations]])
            if self.accelerator.is_main_process:
                path = os.path.join(self.args.output_dir, DATA_ORDER_FILE)
                append_jsonl(path, [{"step": self.state.global_step, "ids": ids}], fsync=False)
        return out

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
        rewards_per_func = self._batch.rewards_per_func
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
                rng = np.random.default_rng(
                    [self.args.seed, self.state.global_step, self.accelerator.process_index]
                )
                pixel_values = perturb_with_processor(
                    pixel_values.cpu(),
                    grid.cpu(),
                    self.processing_class.image_processor,
                    self.args.perturb_mode,
                    self.args.perturb_prob,
                    rng,
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
        self._batch.token_quantities = {"s": s if s_rows else None, "s_mask": s_mask, "w": None}
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
            self._batch.token_quantities["w"] = w
            self._log_expert_token_metrics(p, w, exp_mask, inputs)
            if cfg.expert_ratio == "teacher_is":
                out["expert_teacher_logps"] = stored_teacher_logps(
                    inputs, out["is_expert"], self._full_expert_ids, out["completion_mask"].shape
                )
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

    # ---------------------------------------------------------------------------------------------
    # THE LOSS

    def _compute_loss(self, model, inputs):
        """docs/design.md#55-loss: PPO-clip on on-policy tokens, -A * w * f(pi_theta) on expert tokens
        (tgrl_loss_terms)."""
        logps, entropies, aux_loss = self._policy_logps_and_entropies(model, inputs)
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
        coef = self.args.expert_coef_at_step(self.state.global_step, self.state.max_steps)
        terms = tgrl_loss_terms(
            logps,
            old_logps,
            inputs["advantages"],
            mask,
            self.loss_switches(),
            expert_mask=row_is_expert,
            expert_weights=inputs.get("expert_weights"),
            onpolicy_weights=onpolicy_weights,
            teacher_logp=inputs.get("expert_teacher_logps"),
            ref_logp=inputs.get("ref_per_token_logps") if self.beta != 0.0 else None,
            expert_coef=coef,
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
            loss = loss + self.router_aux_loss_coef * aux_loss / accumulation
        if mode == "train" and self._grad_share_due():
            self._log_grad_share(model, terms, scale)
        self._log_loss_metrics(terms.metrics, mode, logps, entropies, completion_mask, row_is_expert, coef)
        return loss

    def loss_switches(self) -> LossSwitches:
        """The loss's switches: TGRL's from the config, TRL's clip range, KL and aggregation from the
        attributes GRPOTrainer's own loss reads."""
        cfg = self.args
        return LossSwitches(
            expert_ratio=cfg.expert_ratio,
            gamma=cfg.expert_gamma,
            teacher_is_cap=cfg.teacher_is_cap,
            neg_p_floor=cfg.expert_neg_p_floor,
            expert_loss_norm=cfg.expert_loss_norm,
            eps_low=self.epsilon_low,
            eps_high=self.epsilon_high,
            on_policy_clip=cfg.on_policy_clip,
            beta=self.beta,
            kl_is_correction=cfg.use_bias_correction_kl,
            loss_agg=LOSS_AGG[self.loss_type],
            max_len=self.max_completion_length,
        )

    def _policy_logps_and_entropies(self, model, inputs):
        """Per-token log-probs and entropies of the completions under the current policy (with gradient),
        and the router's auxiliary loss (None unless a MoE model asks for it)."""
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        model_inputs = {key: inputs.get(key) for key in _MODEL_INPUT_KEYS}
        if self._can_share_prompt_prefix(model, model_inputs):
            with self.accelerator.autocast():
                shared = shared_prefix_logps_and_entropies(
                    model,
                    input_ids,
                    attention_mask,
                    inputs["completion_ids"].size(1),
                    compute_entropy=True,
                    **{key: model_inputs[key] for key in _PREFIX_KEYS},
                )
            if shared is not None:
                return (*shared, None)
        return self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            inputs["completion_ids"].size(1),
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            **model_inputs,
        )

    def _can_share_prompt_prefix(self, model, model_inputs: dict) -> bool:
        """share_prompt_prefix is on and this model and input layout allow it; the first time it cannot,
        one line says why (TRL's per-row forward runs instead)."""
        if not self.args.share_prompt_prefix:
            return False
        extra = sorted(k for k, v in model_inputs.items() if v is not None and k not in _PREFIX_KEYS)
        blocker = share_prompt_prefix_blocker(model)
        if blocker is None and (extra or self.aux_loss_enabled):
            blocker = f"inputs outside the Qwen-VL layout ({extra})" if extra else "a MoE auxiliary loss"
        if blocker is not None and not getattr(self, "_prefix_sharing_refused", False):
            self._prefix_sharing_refused = True
            if self.accelerator.is_main_process:
                print(f"[tgrl] share_prompt_prefix: TRL's per-row forward instead: {blocker}", flush=True)
        return blocker is None

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
