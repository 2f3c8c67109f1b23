"""Token quantities, token weights and the TGRL loss as pure tensor functions
(docs/design.md#5-the-tgrl-algorithm).

Nothing here knows about models, TRL or configs, so each piece is tested against hand-computed values.
Conventions: token tensors are (B, T) with ``mask`` 1 at valid completion tokens; values at masked
positions never matter (they are replaced before any arithmetic); losses are minimised, each token loss
``-A * (weight) * (term)``; stop-gradient quantities (s_t, w_t, u_t, p_t of pi_old) are detached.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

EXPERT_TOKEN_WEIGHTS = ("none", "vis_dep", "vis_topk", "entropy_topk", "chord_phi", "trust_region")
EXPERT_RATIOS = ("shaped", "raw_p", "sft", "teacher_is")
LOSS_AGGS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
EXPERT_LOSS_NORMS = ("joint", "separate")


def _unknown(kind: str, value: str, valid: tuple[str, ...]) -> ValueError:
    return ValueError(f"unknown {kind} {value!r}; valid: {', '.join(valid)}")


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over ``mask``; 0 (not NaN) where the mask is empty (HPT #9: an empty expert
    micro-batch must not give NaN). Values of ``x`` at masked positions are ignored, even NaN."""
    m = mask.to(torch.bool)
    xs = torch.where(m, x, torch.zeros_like(x))
    if dim is None:
        return xs.sum() / m.sum().clamp(min=1)
    return xs.sum(dim) / m.sum(dim).clamp(min=1)


# ---------------------------------------------------------------------------------------------------
# 5.3 group advantages


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    std_norm: bool = True,
    eps: float = 1e-4,
    on_policy_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """A_i = (r_i - mean_G r) / (std_G r + eps) over consecutive groups of ``group_size``
    (docs/design.md#53-groups).

    Matches TRL GRPOTrainer (scale_rewards="group") so that TGRL with guidance off is GRPO: the std
    is the *unbiased* one (Bessel, like torch.std / trl nanstd), and ``eps`` defaults to TRL's 1e-4
    (verl, LUFFY's code, uses 1e-6, docs/design.md#11-deviations; the difference is < 3e-4 relative, but the
    GRPO-equivalence test needs TRL's value). NaN rewards (unscorable) are left out of mean/std and get A = 0,
    as in TRL. ``std_norm=False`` gives A = r - mean (Dr.GRPO / LUFFY's train.sh).

    ``on_policy_mask`` (N,) bool selects ``adv_group="on_only"``: mean and std come from the on-policy
    members only and are applied to every member (expert included; LUFFY's grpo_split). If those
    members tie (or there is only one), their std is 0 and dividing would give the expert
    |A| ~ 1/eps, so such groups are not divided (A = r - mean). A group with no statistics members
    gets A = 0. In mixed groups a tie implies every numerator is 0, so the rule changes nothing there.
    """
    if rewards.dim() != 1 or group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a length divisible by group_size={group_size}")
    r = rewards.view(-1, group_size)
    valid = ~torch.isnan(r)
    member = valid if on_policy_mask is None else valid & on_policy_mask.view(-1, group_size).to(torch.bool)
    n = member.sum(1, keepdim=True)
    rz = torch.where(member, r, torch.zeros_like(r))
    mean = rz.sum(1, keepdim=True) / n.clamp(min=1)
    adv = r - mean
    if std_norm:
        dev = torch.where(member, r - mean, torch.zeros_like(r))
        std = ((dev**2).sum(1, keepdim=True) / (n - 1).clamp(min=1)).sqrt()
        hi = torch.where(member, r, torch.full_like(r, -math.inf)).amax(1, keepdim=True)
        lo = torch.where(member, r, torch.full_like(r, math.inf)).amin(1, keepdim=True)
        tied = (hi <= lo) | (n < 2)
        adv = adv / torch.where(tied, torch.ones_like(std), std + eps)
    adv = torch.where(valid & (n > 0), adv, torch.zeros_like(adv))
    return adv.reshape(-1)


# ---------------------------------------------------------------------------------------------------
# 5.4 token quantities (experience phase, no gradient)


@torch.no_grad()
def visual_dependency(
    logp_clean: torch.Tensor, logp_perturbed: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """VPPO k3 visual dependency of each token (docs/design.md#54-token-quantities), stop-gradient.

    d_t = clamp(log p(y_t|I~) - log p(y_t|I), -20, 20);  s_t = clamp(exp(d_t) - d_t - 1, 0, 10).
    s_t >= 0 is large where the token depends on the image. Both are 0 at masked positions.
    """
    m = mask.to(torch.bool)
    d = torch.where(
        m, logp_perturbed.float() - logp_clean.float(), torch.zeros_like(logp_clean, dtype=torch.float)
    )
    d = torch.nan_to_num(d, nan=0.0).clamp(-20.0, 20.0)
    s = (torch.exp(d) - d - 1.0).clamp(0.0, 10.0)
    zero = torch.zeros_like(d)
    return torch.where(m, d, zero), torch.where(m, s, zero)


def _topk_mask(score: torch.Tensor, kept: torch.Tensor, frac: float) -> torch.Tensor:
    """Per row, the top ceil(frac * n_kept) kept tokens by ``score`` (ties: earlier position first)."""
    n = kept.sum(1, keepdim=True).double()
    k = torch.ceil(frac * n - 1e-9)  # the 1e-9 keeps e.g. 0.2 * 15 = 3.0000000000000004 at 3
    masked = torch.where(kept, score.float(), torch.full_like(score, -math.inf, dtype=torch.float))
    order = torch.argsort(masked, dim=1, descending=True, stable=True)
    pos = torch.arange(score.shape[1], device=score.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, pos)
    return kept & (rank < k)


@torch.no_grad()
def expert_token_weights(
    scheme: str,
    *,
    mask: torch.Tensor,
    p: torch.Tensor,
    s: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    alpha: float = 1.0,
    rho: float = 0.4,
    entropy_top: float = 0.2,
    trust_tau: float = 0.1,
    p_min: float = 1e-4,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Stop-gradient token weights w_t for expert (or on-policy, as u_t) tokens
    (docs/design.md#56-token-weights).

    ``p`` is pi_old of each token (docs/design.md#54-token-quantities). Tokens with p < ``p_min`` get w = 0
    and are counted ("zeroed"); every per-trajectory statistic below (min-max, top-k counts, the mean-1
    normaliser) runs over the *kept* tokens K = valid and p >= p_min, so zeroed tokens are removed, not
    redistributed. Rows without kept tokens get all-zero weights. Schemes:

    * ``none``: w = 1 (LUFFY-VL).
    * ``vis_dep`` (default): s^ = (s - min_K s) / (max_K s - min_K s) per trajectory (0 if s is
      constant), w~ = 1 + alpha * s^, w = w~ / mean_K(w~): mean 1 over kept tokens, so credit moves
      toward visually grounded tokens without changing the expert loss scale.
    * ``vis_topk``: 1/rho on the top ceil(rho * |K|) tokens by s, else 0 (VPPO token mask).
    * ``entropy_topk``: 1/entropy_top on the top ceil(entropy_top * |K|) tokens by ``entropy``, else
      0. Same mean-~1 convention as vis_topk (Prefix-RFT / "forking tokens" use weight 1: multiply by
      entropy_top to get that).
    * ``chord_phi``: w = p(1 - p) (CHORD-phi).
    * ``trust_region``: w = min(1, p / trust_tau) (TRAPO TrSFT gradient weight).

    Returns (w, stats) with stats as python floats: w_mean / w_std / w_max over valid tokens,
    zeroed_share and n_zeroed (p < p_min among valid tokens), n_valid.
    """
    if scheme not in EXPERT_TOKEN_WEIGHTS:
        raise _unknown("expert_token_weight scheme", scheme, EXPERT_TOKEN_WEIGHTS)
    valid = mask.to(torch.bool)
    p = torch.where(valid, p.detach().float(), torch.zeros_like(p, dtype=torch.float))
    p = torch.nan_to_num(p, nan=0.0)
    kept = valid & (p >= p_min)
    zero, one = torch.zeros_like(p), torch.ones_like(p)

    if scheme == "none":
        w = one
    elif scheme == "vis_dep":
        if s is None:
            raise ValueError("expert_token_weight 'vis_dep' needs s (visual dependency)")
        if alpha < 0:
            raise ValueError(f"vis_dep alpha must be >= 0, got {alpha}")
        sk = s.detach().float()
        lo = torch.where(kept, sk, torch.full_like(sk, math.inf)).amin(1, keepdim=True)
        hi = torch.where(kept, sk, torch.full_like(sk, -math.inf)).amax(1, keepdim=True)
        span = hi - lo
        s_hat = torch.where(kept & (span > 0), (sk - lo) / span.clamp(min=1e-12), zero)
        w_tilde = torch.where(kept, 1.0 + alpha * s_hat, zero)
        w = w_tilde / masked_mean(w_tilde, kept, dim=1).clamp(min=1e-12).unsqueeze(1)
    elif scheme == "vis_topk":
        if s is None:
            raise ValueError("expert_token_weight 'vis_topk' needs s (visual dependency)")
        if not 0 < rho <= 1:
            raise ValueError(f"vis_topk rho must be in (0, 1], got {rho}")
        w = torch.where(_topk_mask(s.detach(), kept, rho), one / rho, zero)
    elif scheme == "entropy_topk":
        if entropy is None:
            raise ValueError("expert_token_weight 'entropy_topk' needs entropy")
        if not 0 < entropy_top <= 1:
            raise ValueError(f"entropy_topk entropy_top must be in (0, 1], got {entropy_top}")
        w = torch.where(_topk_mask(entropy.detach(), kept, entropy_top), one / entropy_top, zero)
    elif scheme == "chord_phi":
        w = p * (1.0 - p)
    else:  # trust_region
        w = torch.clamp(p / trust_tau, max=1.0)

    w = torch.where(kept, w, zero)
    n_valid = valid.sum().item()
    n_zeroed = (valid & ~kept).sum().item()
    w_mean = masked_mean(w, valid)
    stats = {
        "w_mean": w_mean.item(),
        "w_std": masked_mean((w - w_mean) ** 2, valid).sqrt().item(),
        "w_max": w[valid].max().item() if n_valid else 0.0,
        "zeroed_share": n_zeroed / max(n_valid, 1),
        "n_zeroed": float(n_zeroed),
        "n_valid": float(n_valid),
    }
    return w, stats


# ---------------------------------------------------------------------------------------------------
# 5.5 loss terms


def expert_ratio_term(
    logp: torch.Tensor,
    scheme: str = "shaped",
    gamma: float = 0.1,
    teacher_logp: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
    teacher_is_cap: float = 3.0,
    neg_p_floor: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The policy term f of the expert-token loss l_exp = -A * w * f (docs/design.md#55-loss), with gradient,
    and a bool mask of the tokens whose term was bounded (no gradient there).

    The teacher probability is taken as 1 and there is no ratio to pi_old and no clip (LUFFY):
    * ``shaped``: f = p / (p + gamma); d(-A w f)/dlogp = -A w gamma p / (p + gamma)^2 (LUFFY shaping).
    * ``raw_p``: f = p (plain IS with pi_teacher = 1).
    * ``sft``: f = log p, so l_exp = -A w log p: advantage-weighted SFT (gradient weight A w). With a
      negative advantage (a wrong expert) this is unlikelihood without a floor, pushing log p to -inf:
      where A < 0, f = max(log p, log ``neg_p_floor``) (bounded; no gradient below the floor).
    * ``teacher_is``: f = p / pi_teacher = exp(logp - teacher_logp) (true IS; teacher log-probs stored,
      detached). One token the teacher sampled at low probability makes the ratio explode, so
      f = min(ratio, ``teacher_is_cap``) (PPO-style: no gradient above the cap).
    shaped and raw_p lie in [0, 1] and need no bound.
    """
    none = torch.zeros_like(logp, dtype=torch.bool)
    if scheme == "shaped":
        p = torch.exp(logp)
        return p / (p + gamma), none
    if scheme == "raw_p":
        return torch.exp(logp), none
    if scheme == "sft":
        if advantages is None:
            return logp, none
        floor = math.log(neg_p_floor) if neg_p_floor > 0 else -math.inf
        bounded = (advantages.detach() < 0) & (logp.detach() < floor)
        return torch.where(bounded, torch.full_like(logp, floor), logp), bounded
    if scheme == "teacher_is":
        if teacher_logp is None:
            raise ValueError("expert_ratio 'teacher_is' needs teacher_logp")
        log_ratio = logp - teacher_logp.detach()
        bounded = log_ratio.detach() > math.log(teacher_is_cap)
        return torch.exp(
            torch.where(bounded, torch.full_like(logp, math.log(teacher_is_cap)), log_ratio)
        ), bounded
    raise _unknown("expert_ratio", scheme, EXPERT_RATIOS)


def onpolicy_token_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    clip: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token on-policy loss (docs/design.md#55-loss), 0 at masked positions; same formula as TRL
    GRPOTrainer.

    rho = exp(logp - old_logp); clip on: -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A);
    clip off (``on_policy_clip: false``, LUFFY train.sh): -rho A. ``advantages`` is (B,) or (B, T).
    Stats (python floats, over valid tokens, TRL's definition): clip_low (rho < 1-eps_low and A < 0),
    clip_high (rho > 1+eps_high and A > 0), clip_region (either). Counted even when clip is off.
    """
    m = mask.to(torch.bool)
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    log_ratio = torch.where(m, logp - old_logp, torch.zeros_like(logp))
    ratio = torch.exp(log_ratio)
    if clip:
        clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
        loss = -torch.min(ratio * adv, clipped * adv)
    else:
        loss = -ratio * adv
    loss = torch.where(m, loss, torch.zeros_like(loss))
    with torch.no_grad():
        low = (ratio < 1.0 - eps_low) & (adv < 0)
        high = (ratio > 1.0 + eps_high) & (adv > 0)
        stats = {
            "clip_low": masked_mean(low.float(), m).item(),
            "clip_high": masked_mean(high.float(), m).item(),
            "clip_region": masked_mean((low | high).float(), m).item(),
        }
    return loss, stats


def aggregate(
    per_token: torch.Tensor,
    tokens: torch.Tensor,
    loss_agg: str,
    *,
    rows: torch.Tensor | None = None,
    max_len: int | None = None,
    num_tokens: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce a (B, T) per-token term (0 outside ``tokens``) to a scalar, as TRL's loss types do.

    * ``token_mean``: sum / number of ``tokens`` (``num_tokens`` overrides the count, e.g. TRL's global
      count across micro-batches and ranks);
    * ``seq_mean_token_mean``: per-row token mean, then the mean over ``rows`` (bool (B,); default all
      rows, as TRL's 'grpo' loss, which counts a row whose tokens are all masked as a 0);
    * ``seq_mean_token_sum_norm``: sum / (|rows| * max_len) (Dr.GRPO constant divisor).
    Empty selections give 0, never NaN.
    """
    if loss_agg not in LOSS_AGGS:
        raise _unknown("loss_agg", loss_agg, LOSS_AGGS)
    tokens = tokens.to(torch.bool)
    rows = torch.ones(per_token.size(0), dtype=torch.bool, device=per_token.device) if rows is None else rows
    rows = rows.to(torch.bool)
    if loss_agg == "token_mean":
        if num_tokens is None:
            return per_token.sum() / tokens.sum().clamp(min=1)
        count = torch.as_tensor(num_tokens, dtype=per_token.dtype, device=per_token.device)
        return per_token.sum() / torch.where(
            count > 0, count, torch.ones_like(count)
        )  # as given (TRL's value)
    if loss_agg == "seq_mean_token_mean":
        return masked_mean(masked_mean(per_token, tokens, dim=1), rows)
    if max_len is None or max_len < 1:
        raise ValueError("loss_agg 'seq_mean_token_sum_norm' needs max_len >= 1 (max completion length)")
    return (per_token * rows.unsqueeze(1)).sum() / (rows.sum().clamp(min=1) * max_len)


@dataclass
class LossTerms:
    """The three summands of the TGRL loss (scalars with gradient) and python-float metrics."""

    on_policy: torch.Tensor
    expert: torch.Tensor
    kl: torch.Tensor
    metrics: dict[str, float]

    @property
    def total(self) -> torch.Tensor:
        return self.on_policy + self.expert + self.kl


@dataclass(frozen=True)
class LossSwitches:
    """The switches of the TGRL loss (docs/design.md#55-loss), fixed for a run: the trainer builds one from
    its config (:meth:`tgrl.trainer.TGRLTrainer.loss_switches`). Defaults are LUFFY's expert term with
    PPO-clip on-policy tokens and no KL."""

    expert_ratio: str = "shaped"  # f of the expert term: 'shaped' p/(p+gamma), 'raw_p', 'sft', 'teacher_is'
    gamma: float = 0.1  # gamma of 'shaped'
    teacher_is_cap: float = 3.0  # 'teacher_is': p / pi_teacher clipped here
    neg_p_floor: float = 1e-3  # 'sft' with A < 0: no gradient below this p
    expert_loss_norm: str = "joint"  # one token mean ('joint') or each term over its own tokens
    eps_low: float = 0.2  # PPO clip range of on-policy tokens
    eps_high: float = 0.2
    on_policy_clip: bool = True
    beta: float = 0.0  # KL to the reference, on on-policy tokens only
    kl_is_correction: bool = False  # TRL's use_bias_correction_kl
    loss_agg: str = "token_mean"  # token_mean, seq_mean_token_mean, seq_mean_token_sum_norm
    max_len: int | None = None  # the constant divisor of seq_mean_token_sum_norm

    def __post_init__(self) -> None:
        if self.loss_agg not in LOSS_AGGS:
            raise _unknown("loss_agg", self.loss_agg, LOSS_AGGS)
        if self.expert_ratio not in EXPERT_RATIOS:
            raise _unknown("expert_ratio", self.expert_ratio, EXPERT_RATIOS)
        if self.expert_loss_norm not in EXPERT_LOSS_NORMS:
            raise _unknown("expert_loss_norm", self.expert_loss_norm, EXPERT_LOSS_NORMS)


def tgrl_loss_terms(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    switches: LossSwitches = LossSwitches(),  # noqa: B008 - frozen, so one shared default is safe
    *,
    expert_mask: torch.Tensor | None = None,
    expert_weights: torch.Tensor | None = None,
    onpolicy_weights: torch.Tensor | None = None,
    teacher_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    expert_coef: float = 1.0,
    rows: torch.Tensor | None = None,
    num_tokens: float | torch.Tensor | None = None,
    num_on_tokens: float | torch.Tensor | None = None,
    num_exp_tokens: float | torch.Tensor | None = None,
) -> LossTerms:
    """The TGRL policy loss of one micro-batch (docs/design.md#55-loss), as its on-policy, expert and KL
    summands.

    Per valid token: on-policy tokens l_on = u * onpolicy_token_loss; expert tokens
    l_exp = -A * w * f(p) with f = :func:`expert_ratio_term` (no ratio to pi_old, no clip, no KL),
    weighted by ``expert_coef`` lambda (loss = l_on + lambda l_exp; not CHORD's mu). ``expert_mask`` is
    (B,) per row or (B, T) per token (None: no expert tokens); ``expert_weights`` w and
    ``onpolicy_weights`` u are (B, T), detached here.

    ``expert_loss_norm`` (how the two token sets share a normaliser, :func:`aggregate`):
    * ``joint``: one mean over all valid tokens (LUFFY: sum over on- and off-policy tokens / Z), so an
      expert token's pull shrinks with the expert share of tokens (1 in 8 with 7 + 1 groups);
    * ``separate``: each term averaged over its own tokens / rows (CHORD, SRFT: an RL loss plus an
      SFT-style loss, each a mean), then summed.
    ``num_tokens`` is the joint count; ``num_on_tokens`` / ``num_exp_tokens`` the counts of each set
    for ``separate`` and for the KL (all: TRL's global counts under token_mean; None = local counts).
    ``rows`` (B,) bool: the rows that count under the per-row aggregations (default all; the trainer
    passes the online group filter's kept rows).

    KL (``beta`` > 0; TRL's k3 exp(ref - logp) - (ref - logp) - 1, times the IS ratio with
    ``kl_is_correction``) is on on-policy tokens only and always averaged over on-policy tokens, so
    expert tokens neither get a KL pull nor dilute it. A batch without expert tokens adds exactly 0
    from the expert term; an all-masked batch gives a loss of 0 still attached to the graph; no NaN.
    """
    sw = switches
    loss_agg, max_len, expert_loss_norm = sw.loss_agg, sw.max_len, sw.expert_loss_norm
    valid = mask.to(torch.bool)
    if expert_mask is None:
        is_exp = torch.zeros_like(valid)
    else:
        em = expert_mask.to(torch.bool)
        is_exp = (em.unsqueeze(1) if em.dim() == 1 else em).expand_as(valid)
    exp_tok, on_tok = valid & is_exp, valid & ~is_exp
    all_rows = (
        torch.ones(valid.size(0), dtype=torch.bool, device=valid.device) if rows is None else rows.bool()
    )
    exp_rows = all_rows & is_exp.any(1)
    on_rows = all_rows & ~is_exp.any(1)

    # Sanitise masked positions first so NaN/-inf there reaches neither the loss nor the gradient.
    zero = torch.zeros_like(logp)
    logp = torch.where(valid, logp, zero)
    old_logp = torch.where(valid, old_logp.detach(), zero)
    adv = advantages.detach()
    adv = adv.unsqueeze(1) if adv.dim() == 1 else adv
    adv = torch.where(valid, adv.expand_as(logp), zero)

    # on-policy tokens
    l_on, clip_stats = onpolicy_token_loss(
        logp, old_logp, adv, on_tok, sw.eps_low, sw.eps_high, sw.on_policy_clip
    )
    if onpolicy_weights is not None:
        l_on = l_on * torch.where(on_tok, onpolicy_weights.detach(), zero)

    # expert tokens: -A * w * f(pi_theta); w == 0 tokens are cut before f (sft: 0 * -inf is NaN)
    w = torch.ones_like(logp) if expert_weights is None else expert_weights.detach().to(logp.dtype)
    active = exp_tok & (w != 0)
    t_logp = None if teacher_logp is None else torch.where(active, teacher_logp.detach(), zero)
    f, bounded = expert_ratio_term(
        torch.where(active, logp, zero),
        sw.expert_ratio,
        sw.gamma,
        t_logp,
        adv,
        sw.teacher_is_cap,
        sw.neg_p_floor,
    )
    l_exp = torch.where(active, -adv * w * f, zero)

    if expert_loss_norm == "joint":
        on_term = aggregate(l_on, valid, loss_agg, rows=all_rows, max_len=max_len, num_tokens=num_tokens)
        exp_term = aggregate(l_exp, valid, loss_agg, rows=all_rows, max_len=max_len, num_tokens=num_tokens)
    else:
        on_term = aggregate(l_on, on_tok, loss_agg, rows=on_rows, max_len=max_len, num_tokens=num_on_tokens)
        exp_term = aggregate(
            l_exp, exp_tok, loss_agg, rows=exp_rows, max_len=max_len, num_tokens=num_exp_tokens
        )
    exp_term = expert_coef * exp_term

    kl = zero
    kl_term = zero.sum()
    if sw.beta != 0.0:
        if ref_logp is None:
            raise ValueError("beta != 0 needs ref_logp")
        delta = torch.where(on_tok, ref_logp.detach() - logp, zero)
        kl = torch.where(on_tok, torch.exp(delta) - delta - 1.0, zero)
        if sw.kl_is_correction:
            kl = kl * torch.exp(torch.where(on_tok, logp - old_logp, zero))  # TRL: not detached
        kl_term = sw.beta * aggregate(
            kl, on_tok, loss_agg, rows=on_rows, max_len=max_len, num_tokens=num_on_tokens
        )

    with torch.no_grad():
        metrics = {
            "loss_on": masked_mean(l_on, on_tok).item(),
            "loss_exp": masked_mean(l_exp, exp_tok).item(),
            "n_on_tokens": float(on_tok.sum().item()),
            "n_exp_tokens": float(exp_tok.sum().item()),
            "n_exp_bounded": float((bounded & active).sum().item()),
            "expert_p_mean": masked_mean(torch.exp(logp), exp_tok).item(),
            "expert_p_below_0.01": masked_mean((torch.exp(logp) < 0.01).float(), exp_tok).item(),
            "kl": masked_mean(kl, on_tok).item(),
            **clip_stats,
        }
    return LossTerms(on_term, exp_term, kl_term, metrics)


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
