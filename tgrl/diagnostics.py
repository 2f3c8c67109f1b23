"""The metrics TGRLTrainer logs (docs/metrics.md, docs/design.md#58-diagnostics), as a mixin so the trainer
reads as the algorithm: experience metrics of each generation batch, expert-token metrics of the token
pass, loss metrics, the gradient-share diagnostic, the completions log and step timing. Every mean is over
all ranks."""

from __future__ import annotations

import json
import math
import os
import time
from functools import lru_cache

import torch
from accelerate.utils import gather_object

from tgrl.metrics import COMPLETIONS_FILE
from tgrl.probe import fact_token_positions
from tgrl.rewards import completion_text
from tgrl.teachers.oracle import fact_accuracy
from tgrl.utils import append_jsonl


class TrainingDiagnostics:
    """Logging methods of :class:`tgrl.trainer.TGRLTrainer` (a GRPOTrainer): they read the trainer's
    per-batch state (``self._batch``) and write to TRL's ``self._metrics``."""

    @lru_cache(maxsize=256)  # noqa: B019 - one trainer per process; texts repeat G times
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

    def _log_completions(self, out, inputs) -> None:
        """Append this batch's completions to ``completions.jsonl`` (main process; every rank's rows): what
        a person reads in the trajectory report. Token s_t / w_t are the values this step's token pass
        used (None where it computed none: s_t only on the rows it perturbed, w_t only on expert rows)."""
        tok = self._tokenizer
        quantities = self._batch.token_quantities
        s, s_mask, w = quantities.get("s"), quantities.get("s_mask"), quantities.get("w")
        n = out["completion_ids"].size(0)
        local = self._process_slice(n)
        rewards = self._summed_rewards()[local]
        per_func = self._batch.rewards_per_func[local]
        rows = []
        for i in range(n):
            length = int(out["completion_mask"][i].sum())
            ids = out["completion_ids"][i, :length].tolist()
            text = completion_text(self._batch.completions[i])
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
        rewards_per_func = self._batch.rewards_per_func
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
        generated = self._batch.timing.get("generated", float(out["completion_ids"].size(0)))
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
            texts = [completion_text(c) for c in self._batch.completions]
            local = [_fact_accuracy(t, f) for t, f in zip(texts, facts, strict=True)]
            fact = self.accelerator.gather(
                torch.tensor(local, dtype=torch.float32, device=rewards_per_func.device)
            )
            mean_of(fact, on, "fact_accuracy")
            mean_of(fact, is_exp, "fact_accuracy/expert")

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
