"""tgrl.token_weights against hand-computed values (docs/design.md#5-the-tgrl-algorithm)."""

import dataclasses
import math

import pytest
import torch

from tgrl.token_weights import (
    EXPERT_RATIOS,
    EXPERT_TOKEN_WEIGHTS,
    LossSwitches,
    aggregate,
    expert_ratio_term,
    expert_token_weights,
    group_advantages,
    masked_mean,
    onpolicy_token_loss,
    tgrl_loss_terms,
    visual_dependency,
)

T = torch.tensor


SWITCHES = {f.name for f in dataclasses.fields(LossSwitches)}


def loss_terms(logp, old, adv, mask, **kwargs):
    """tgrl_loss_terms with the switches among ``kwargs`` gathered into its LossSwitches."""
    switches = LossSwitches(**{k: v for k, v in kwargs.items() if k in SWITCHES})
    tensors = {k: v for k, v in kwargs.items() if k not in SWITCHES}
    return tgrl_loss_terms(logp, old, adv, mask, switches, **tensors)


def tgrl_loss(logp, old, adv, mask, **kwargs):
    """(total loss, metrics) of :func:`loss_terms`."""
    terms = loss_terms(logp, old, adv, mask, **kwargs)
    return terms.total, terms.metrics


def close(a, b, tol=1e-6):
    return torch.allclose(
        torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64), atol=tol
    )


# ---------------------------------------------------------------------------------------------------
# masked_mean


def test_masked_mean_values_and_empty():
    x = T([[1.0, 2.0, float("nan")], [4.0, 5.0, 6.0]])
    m = T([[1, 1, 0], [0, 0, 0]])
    assert masked_mean(x, m).item() == 1.5
    assert close(masked_mean(x, m, dim=1), [1.5, 0.0])  # empty row -> 0, not NaN
    assert masked_mean(x, torch.zeros_like(m)).item() == 0.0


# ---------------------------------------------------------------------------------------------------
# advantages


def test_group_advantages_luffy_example_unbiased_std():
    # 7 on-policy wrong + expert right (docs/anchors.md#2-luffy): mean 1/8, unbiased std sqrt(1/8)
    r = T([0.0] * 7 + [1.0])
    eps = 1e-4
    std = math.sqrt((7 * (1 / 8) ** 2 + (7 / 8) ** 2) / 7)
    assert abs(std - math.sqrt(1 / 8)) < 1e-12
    a = group_advantages(r, 8, eps=eps)
    assert close(a, [-0.125 / (std + eps)] * 7 + [0.875 / (std + eps)])
    assert close(a, (r - r.mean()) / (r.std() + eps))  # torch.std default is unbiased, as in TRL
    assert close(group_advantages(r, 8, std_norm=False), [-0.125] * 7 + [0.875])


def test_group_advantages_match_trl_formula_random_groups():
    """TRL GRPOTrainer (scale_rewards="group"): (r - mean_G) / (nanstd_G + 1e-4), nanstd with Bessel."""
    g = torch.Generator().manual_seed(0)
    r = torch.randint(0, 3, (40,), generator=g).float() * 0.5 + torch.rand(40, generator=g).round()
    grouped = r.view(5, 8)
    trl = (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)
    assert torch.allclose(group_advantages(r, 8), trl.reshape(-1), atol=1e-6)


def test_group_advantages_groups_are_consecutive_and_ties_give_zero():
    r = T([1.0, 1.0, 1.0, 0.0, 2.0, 4.0])
    a = group_advantages(r, 3, eps=0.0)
    std2 = math.sqrt(((0 - 2) ** 2 + 0 + (4 - 2) ** 2) / 2)  # = 2
    assert close(a, [0, 0, 0, -2 / std2, 0, 2 / std2])
    with pytest.raises(ValueError):
        group_advantages(r, 4)


def test_group_advantages_on_only():
    # on-policy [0, 1, 0] + expert 1: stats from the on-policy members only, applied to all
    r = T([0.0, 1.0, 0.0, 1.0])
    on = T([True, True, True, False])
    mean, std, eps = 1 / 3, math.sqrt(((1 / 3) ** 2 * 2 + (2 / 3) ** 2) / 2), 1e-4
    a = group_advantages(r, 4, eps=eps, on_policy_mask=on)
    assert close(a, [(x - mean) / (std + eps) for x in [0, 1, 0, 1]])
    # all on-policy members tie: no division by ~0 (the expert would get 1/eps), A = r - mean
    a = group_advantages(T([0.0, 0.0, 0.0, 1.0]), 4, on_policy_mask=on)
    assert close(a, [0, 0, 0, 1])
    # no statistics members at all: A = 0
    a = group_advantages(T([0.0, 1.0]), 2, on_policy_mask=T([False, False]))
    assert close(a, [0, 0])


def test_group_advantages_nan_reward_is_excluded_and_zero():
    r = T([1.0, float("nan"), 0.0, 0.0])
    a = group_advantages(r, 4, eps=0.0)
    mean, std = 1 / 3, math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)
    assert close(a, [(1 - mean) / std, 0, -mean / std, -mean / std])
    assert not torch.isnan(group_advantages(T([float("nan")] * 2), 2)).any()


# ---------------------------------------------------------------------------------------------------
# visual dependency


def test_visual_dependency_values_clamps_mask_and_no_grad():
    clean = T([[-1.0, -2.0, -0.5, -1.0, -3.0]], requires_grad=True)
    pert = T([[-3.0, -1.0, -0.5, 29.0, float("nan")]])
    mask = T([[1, 1, 1, 1, 0]])
    d, s = visual_dependency(clean, pert, mask)
    assert close(d, [[-2.0, 1.0, 0.0, 20.0, 0.0]])  # 30 clamps to 20; masked NaN -> 0
    assert close(s, [[math.exp(-2) + 1, math.e - 2, 0.0, 10.0, 0.0]], tol=1e-5)  # exp(20)-21 clamps to 10
    assert not d.requires_grad and not s.requires_grad


# --------------------------------------------------------------------------------------------------- token
# weights


def test_weights_none_and_p_min_zeroing():
    p = T([[0.5, 1e-5, 0.9], [0.3, 0.2, 0.7]])
    mask = T([[1, 1, 1], [1, 1, 0]])
    w, st = expert_token_weights("none", mask=mask, p=p)
    assert close(w, [[1, 0, 1], [1, 1, 0]])
    assert st["n_zeroed"] == 1.0 and st["n_valid"] == 5.0 and close(st["zeroed_share"], 0.2)
    assert close(st["w_mean"], 4 / 5)
    assert all(isinstance(v, float) for v in st.values())


def test_weights_vis_dep_hand_values_and_mean_one():
    s = T([[0.0, 1.0, 3.0, 7.0]])
    p = torch.full_like(s, 0.5)
    mask = T([[1, 1, 1, 0]])  # the masked 7.0 must not enter the min-max
    w, st = expert_token_weights("vis_dep", s=s, p=p, mask=mask, alpha=1.0)
    # s^ = [0, 1/3, 1], w~ = [1, 4/3, 2], mean 13/9
    assert close(w, [[9 / 13, 12 / 13, 18 / 13, 0.0]])
    assert close(st["w_mean"], 1.0)
    w, _ = expert_token_weights("vis_dep", s=s, p=p, mask=mask, alpha=0.5)
    wt = [1.0, 1 + 0.5 / 3, 1.5]
    assert close(w[0, :3], [x / (sum(wt) / 3) for x in wt])
    # constant s -> all ones; masked token value changes nothing
    w, _ = expert_token_weights("vis_dep", s=T([[2.0, 2.0, 2.0, 9.0]]), p=p, mask=mask)
    assert close(w, [[1, 1, 1, 0]])
    w1, _ = expert_token_weights("vis_dep", s=T([[0.0, 1.0, 3.0, -50.0]]), p=p, mask=mask)
    assert close(w1, [[9 / 13, 12 / 13, 18 / 13, 0.0]])


def test_weights_vis_dep_p_min_tokens_leave_the_statistics():
    s = T([[0.0, 1.0, 3.0, 10.0]])
    p = T([[0.5, 0.5, 0.5, 1e-6]])  # the s=10 token is zeroed, so the range is 0..3 as above
    w, st = expert_token_weights("vis_dep", s=s, p=p, mask=torch.ones_like(s))
    assert close(w, [[9 / 13, 12 / 13, 18 / 13, 0.0]])
    assert st["n_zeroed"] == 1.0


def test_weights_vis_dep_mean_one_property_random():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(6, 17, generator=g) * 10
    mask = torch.rand(6, 17, generator=g) > 0.3
    mask[5] = False  # an empty row
    w, _ = expert_token_weights("vis_dep", s=s, p=torch.full_like(s, 0.5), mask=mask, alpha=2.0)
    row_mean = masked_mean(w, mask, dim=1)
    assert close(row_mean[:5], torch.ones(5), tol=1e-5)
    assert (w[5] == 0).all() and not torch.isnan(w).any() and (w[~mask] == 0).all()


def test_weights_vis_topk_and_entropy_topk():
    s = T([[0.5, 3.0, 1.0, 2.0, 0.1], [5.0, 1.0, 4.0, 0.0, 0.0]])
    mask = T([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    p = torch.full_like(s, 0.5)
    w, _ = expert_token_weights("vis_topk", s=s, p=p, mask=mask, rho=0.4)
    # row 0: k = ceil(0.4*5) = 2 -> s=3 and s=2; row 1: k = ceil(0.4*3) = 2 -> s=5 and s=4
    assert close(w, [[0, 2.5, 0, 2.5, 0], [2.5, 0, 2.5, 0, 0]])
    ent = torch.arange(15.0).flip(0).unsqueeze(0)  # 14, 13, ..., 0
    w, st = expert_token_weights(
        "entropy_topk", entropy=ent, p=torch.full_like(ent, 0.5), mask=torch.ones_like(ent)
    )
    # k = ceil(0.2*15) = 3 exactly (0.2*15 = 3.0000000000000004 in floating point), weight 1/0.2
    assert close(w, [[5.0] * 3 + [0.0] * 12])
    assert close(st["w_mean"], 1.0)


def test_weights_chord_phi_and_trust_region():
    p = T([[0.5, 0.9, 0.05, 0.0]])
    mask = T([[1, 1, 1, 1]])
    w, st = expert_token_weights("chord_phi", p=p, mask=mask)
    assert close(w, [[0.25, 0.09, 0.05 * 0.95, 0.0]])
    assert st["n_zeroed"] == 1.0  # p = 0 < p_min
    w, _ = expert_token_weights("trust_region", p=p, mask=mask, trust_tau=0.1)
    assert close(w, [[1.0, 1.0, 0.5, 0.0]])


def test_weights_empty_rows_errors_and_no_grad():
    s = torch.rand(2, 4, requires_grad=True)
    p = torch.full((2, 4), 0.5)
    mask = torch.zeros(2, 4)
    for scheme in EXPERT_TOKEN_WEIGHTS:
        w, st = expert_token_weights(scheme, s=s, p=p, entropy=s, mask=mask)
        assert (w == 0).all() and not w.requires_grad
        assert all(math.isfinite(v) for v in st.values())
    with pytest.raises(ValueError, match="vis_dep.*vis_topk"):
        expert_token_weights("bogus", p=p, mask=mask)
    with pytest.raises(ValueError, match="needs s"):
        expert_token_weights("vis_dep", p=p, mask=mask)
    with pytest.raises(ValueError, match="needs entropy"):
        expert_token_weights("entropy_topk", p=p, mask=mask)


# --------------------------------------------------------------------------------------------------- ratio
# term


@pytest.mark.parametrize("scheme", EXPERT_RATIOS)
def test_expert_ratio_term_values_and_gradient(scheme):
    gamma, A, w = 0.1, 1.7, T([0.5, 1.0, 2.0, 1.3])
    p = T([0.01, 0.1, 0.5, 1.0])
    tlp = T([-0.1, -0.2, -0.3, -0.05])
    logp = p.log().requires_grad_(True)
    f, bounded = expert_ratio_term(logp, scheme, gamma=gamma, teacher_logp=tlp)
    assert not bounded.any()  # inside every bound
    expected_f = {
        "shaped": p / (p + gamma),
        "raw_p": p,
        "sft": p.log(),
        "teacher_is": p / tlp.exp(),
    }[scheme]
    assert close(f, expected_f, tol=1e-6)
    (-A * w * f).sum().backward()
    # closed forms of d(-A w f)/dlogp (docs/anchors.md#10-gradient-weights)
    expected_grad = {
        "shaped": -A * w * gamma * p / (p + gamma) ** 2,
        "raw_p": -A * w * p,
        "sft": -A * w,
        "teacher_is": -A * w * p / tlp.exp(),
    }[scheme]
    assert close(logp.grad, expected_grad, tol=1e-6)


def test_expert_ratio_term_errors():
    with pytest.raises(ValueError, match="shaped"):
        expert_ratio_term(torch.zeros(2), "nope")
    with pytest.raises(ValueError, match="teacher_logp"):
        expert_ratio_term(torch.zeros(2), "teacher_is")


# ---------------------------------------------------------------------------------------------------
# on-policy loss


def test_onpolicy_token_loss_clip_values_stats_and_grad():
    ratios = T([[1.5, 1.5, 0.5, 0.5, 1.0]])
    old = T([[-1.0, -2.0, -0.5, -0.3, -1.0]])
    logp = (old + ratios.log()).requires_grad_(True)
    adv = T([[1.0, -1.0, -1.0, 1.0, 2.0]])
    mask = T([[1, 1, 1, 1, 1]])
    loss, st = onpolicy_token_loss(logp, old, adv, mask, 0.2, 0.2, clip=True)
    # -min(rho A, clip(rho, .8, 1.2) A)
    assert close(loss, [[-1.2, 1.5, 0.8, -0.5, -2.0]], tol=1e-6)
    assert close(st["clip_high"], 1 / 5) and close(st["clip_low"], 1 / 5) and close(st["clip_region"], 2 / 5)
    loss.sum().backward()
    # clipped tokens (0 and 2) have no gradient; others -rho A
    assert close(logp.grad, [[0.0, 1.5, 0.0, -0.5, -2.0]], tol=1e-6)
    loss_nc, _ = onpolicy_token_loss(logp, old, adv, mask, 0.2, 0.2, clip=False)
    assert close(loss_nc, -ratios * adv, tol=1e-6)
    # (B,) advantages broadcast like (B, T); eps_high changes the upper bound
    l1, _ = onpolicy_token_loss(logp, old, T([1.0]), mask, 0.2, 0.28)
    assert close(l1, [[-1.28, -1.28, -0.5, -0.5, -1.0]], tol=1e-6)


# ---------------------------------------------------------------------------------------------------
# tgrl_loss


def _batch():
    """Row 0 on-policy (3 valid tokens), row 1 expert (2 valid), row 2 on-policy (1 valid)."""
    old = T([[-1.0, -0.5, -2.0, 0.0], [-0.7, -3.0, 0.0, 0.0], [-0.2, 0.0, 0.0, 0.0]])
    delta = T([[0.1, -0.3, 0.0, 0.0], [0.2, 0.5, 0.0, 0.0], [0.05, 0.0, 0.0, 0.0]])
    logp = (old + delta).requires_grad_(True)
    mask = T([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]])
    adv = T([0.8, 1.5, -0.4])
    expert = T([False, True, False])
    w = T([[1.0, 1.0, 1.0, 1.0], [0.6, 1.4, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    return logp, old, mask, adv, expert, w


def _hand_tokens(logp, old, adv, gamma=0.1, eps=0.2):
    """Per-token losses by hand (python floats): on-policy PPO-clip rows 0 and 2, shaped expert row 1."""

    def on(lp, lo, a):
        rho = math.exp(lp - lo)
        return -min(rho * a, min(max(rho, 1 - eps), 1 + eps) * a)

    def ex(lp, a, w):
        p = math.exp(lp)
        return -a * w * p / (p + gamma)

    lp, lo = logp.tolist(), old.tolist()
    row0 = [on(lp[0][t], lo[0][t], adv[0]) for t in range(3)]
    row1 = [ex(lp[1][0], adv[1], 0.6), ex(lp[1][1], adv[1], 1.4)]
    row2 = [on(lp[2][0], lo[2][0], adv[2])]
    return row0, row1, row2


def test_tgrl_loss_hand_values_all_aggregations():
    logp, old, mask, adv, expert, w = _batch()
    row0, row1, row2 = _hand_tokens(logp.detach(), old, adv.tolist())
    tot = sum(row0) + sum(row1) + sum(row2)
    kw = dict(expert_mask=expert, expert_weights=w, expert_ratio="shaped", gamma=0.1)
    loss, met = tgrl_loss(logp, old, adv, mask, loss_agg="token_mean", **kw)
    assert close(loss, tot / 6)
    assert met["n_exp_tokens"] == 2.0 and met["n_on_tokens"] == 4.0
    assert close(met["loss_exp"], sum(row1) / 2) and close(met["loss_on"], (sum(row0) + sum(row2)) / 4)
    loss, _ = tgrl_loss(logp, old, adv, mask, loss_agg="seq_mean_token_mean", **kw)
    assert close(loss, (sum(row0) / 3 + sum(row1) / 2 + sum(row2) / 1) / 3)
    loss, _ = tgrl_loss(logp, old, adv, mask, loss_agg="seq_mean_token_sum_norm", max_len=10, **kw)
    assert close(loss, tot / (3 * 10))
    loss, _ = tgrl_loss(logp, old, adv, mask, loss_agg="token_mean", num_tokens=12, **kw)
    assert close(loss, tot / 12)
    # a per-token expert mask equal to the per-row one gives the same loss
    loss_tok, _ = tgrl_loss(logp, old, adv, mask, **{**kw, "expert_mask": expert.unsqueeze(1).expand(3, 4)})
    loss_row, _ = tgrl_loss(logp, old, adv, mask, **kw)
    assert close(loss_tok, loss_row)


def test_tgrl_loss_expert_gradient_closed_form():
    logp, old, mask, adv, expert, w = _batch()
    gamma = 0.1
    loss, _ = tgrl_loss(logp, old, adv, mask, expert_mask=expert, expert_weights=w, gamma=gamma)
    loss.backward()
    p = logp.detach()[1, :2].exp()
    expected = -1.5 * w[1, :2] * gamma * p / (p + gamma) ** 2 / 6  # token_mean over 6 valid tokens
    assert close(logp.grad[1, :2], expected)
    assert (logp.grad[~mask.bool()] == 0).all()


def test_tgrl_loss_without_expert_is_grpo():
    """No expert tokens, u = 1: TRL GRPOTrainer's per-token loss with its bnpo / grpo / dr_grpo sums."""
    logp, old, mask, adv, _, _ = _batch()
    per_tok = -torch.min(
        torch.exp(logp - old) * adv[:, None], torch.clamp(torch.exp(logp - old), 0.8, 1.28) * adv[:, None]
    )
    bnpo = (per_tok * mask).sum() / mask.sum().clamp(min=1.0)
    grpo = ((per_tok * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    dr = (per_tok * mask).sum() / (per_tok.size(0) * 4)
    kw = dict(eps_low=0.2, eps_high=0.28)
    assert close(tgrl_loss(logp, old, adv, mask, **kw)[0], bnpo)
    assert close(tgrl_loss(logp, old, adv, mask, loss_agg="seq_mean_token_mean", **kw)[0], grpo)
    assert close(tgrl_loss(logp, old, adv, mask, loss_agg="seq_mean_token_sum_norm", max_len=4, **kw)[0], dr)
    # an all-False expert mask adds exactly 0
    a, _ = tgrl_loss(logp, old, adv, mask, **kw)
    b, met = tgrl_loss(logp, old, adv, mask, expert_mask=torch.zeros(3, dtype=torch.bool), **kw)
    assert a.item() == b.item() and met["loss_exp"] == 0.0 and met["n_exp_tokens"] == 0.0


def test_tgrl_loss_masked_tokens_change_nothing():
    logp, old, mask, adv, expert, w = _batch()
    base, _ = tgrl_loss(logp, old, adv, mask, expert_mask=expert, expert_weights=w)
    base.backward()
    g0 = logp.grad.clone()
    logp2 = logp.detach().clone()
    old2 = old.clone()
    logp2[0, 3], old2[0, 3], logp2[1, 2], old2[2, 1] = float("nan"), float("inf"), -float("inf"), 123.0
    w2 = w.clone()
    w2[1, 3] = 1e6
    logp2.requires_grad_(True)
    loss, _ = tgrl_loss(logp2, old2, adv, mask, expert_mask=expert, expert_weights=w2)
    loss.backward()
    assert loss.item() == base.item()
    assert torch.equal(logp2.grad, g0)


def test_tgrl_loss_all_masked_and_p_zero_no_nan():
    logp = torch.full((2, 3), -1.0, requires_grad=True)
    old = torch.full((2, 3), -1.0)
    mask = torch.zeros(2, 3)
    for agg in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"):
        loss, met = tgrl_loss(
            logp, old, T([1.0, -1.0]), mask, expert_mask=T([True, False]), loss_agg=agg, max_len=3
        )
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
        assert (logp.grad == 0).all()
        assert all(math.isfinite(v) for v in met.values())
    # an expert token with p = 0: zeroed by p_min (w = 0) under sft, and shaped with w = 1
    lp = T([[-math.inf, -0.5]], requires_grad=True)
    pw, _ = expert_token_weights("none", p=lp.detach().exp(), mask=T([[1, 1]]))
    for ratio, w in (("sft", pw), ("shaped", torch.ones(1, 2)), ("raw_p", torch.ones(1, 2))):
        loss, met = tgrl_loss(
            lp,
            lp.detach(),
            T([1.0]),
            T([[1, 1]]),
            expert_mask=T([True]),
            expert_weights=w,
            expert_ratio=ratio,
        )
        loss.backward()
        assert math.isfinite(loss.item()) and torch.isfinite(lp.grad).all()
        assert all(math.isfinite(v) for v in met.values())
        lp.grad = None


def test_tgrl_loss_onpolicy_weights_and_kl():
    logp, old, mask, adv, expert, w = _batch()
    u = torch.full((3, 4), 2.0)
    a, _ = tgrl_loss(logp, old, adv, mask, expert_mask=expert, expert_weights=w)
    b, _ = tgrl_loss(logp, old, adv, mask, expert_mask=expert, expert_weights=w, onpolicy_weights=u)
    row0, row1, row2 = _hand_tokens(logp.detach(), old, adv.tolist())
    assert close(b - a, (sum(row0) + sum(row2)) / 6)  # on-policy part doubled, expert part unchanged
    ref = logp.detach() - 0.3  # ref - logp = -0.3 on every token: k3 = exp(-0.3) + 0.3 - 1
    c, met = tgrl_loss(logp, old, adv, mask, expert_mask=expert, expert_weights=w, ref_logp=ref, beta=0.1)
    k3 = math.exp(-0.3) + 0.3 - 1
    # KL on the 4 on-policy tokens only, and averaged over them: the 2 expert tokens are not in its
    # normaliser (it was 4 / 6 when KL shared the loss normaliser)
    assert close(c - a, 0.1 * k3)
    assert close(met["kl"], k3)
    with pytest.raises(ValueError, match="ref_logp"):
        tgrl_loss(logp, old, adv, mask, beta=0.1)


def test_tgrl_loss_errors():
    logp, old, mask, adv, _, _ = _batch()
    with pytest.raises(ValueError, match="token_mean"):
        tgrl_loss(logp, old, adv, mask, loss_agg="sum")
    with pytest.raises(ValueError, match="shaped"):
        tgrl_loss(logp, old, adv, mask, expert_ratio="bogus")
    with pytest.raises(ValueError, match="max_len"):
        tgrl_loss(logp, old, adv, mask, loss_agg="seq_mean_token_sum_norm")


# ---------------------------------------------------------------------------------------------------
# expert-term strength


def test_separate_normaliser_hand_values():
    """expert_loss_norm 'separate': each term averaged over its own tokens (rows), then summed; the
    expert term scaled by expert_coef. Hand values from the per-token losses of _hand_tokens."""
    logp, old, mask, adv, expert, w = _batch()
    row0, row1, row2 = _hand_tokens(logp.detach(), old, adv.tolist())
    kw = dict(expert_mask=expert, expert_weights=w, expert_loss_norm="separate")
    terms = loss_terms(logp, old, adv, mask, loss_agg="token_mean", **kw)
    assert close(terms.on_policy, (sum(row0) + sum(row2)) / 4)
    assert close(terms.expert, sum(row1) / 2)
    terms = loss_terms(logp, old, adv, mask, loss_agg="token_mean", expert_coef=0.3, **kw)
    assert close(terms.total, (sum(row0) + sum(row2)) / 4 + 0.3 * sum(row1) / 2)
    # global counts (TRL's num_items_in_batch style) replace the local ones, per set
    terms = loss_terms(logp, old, adv, mask, num_on_tokens=10, num_exp_tokens=5, **kw)
    assert close(terms.total, (sum(row0) + sum(row2)) / 10 + sum(row1) / 5)
    terms = loss_terms(logp, old, adv, mask, loss_agg="seq_mean_token_mean", **kw)
    assert close(terms.total, (sum(row0) / 3 + sum(row2) / 1) / 2 + sum(row1) / 2)
    terms = loss_terms(logp, old, adv, mask, loss_agg="seq_mean_token_sum_norm", max_len=10, **kw)
    assert close(terms.total, (sum(row0) + sum(row2)) / (2 * 10) + sum(row1) / (1 * 10))
    # joint with coef: the expert share of the one mean is scaled
    terms = loss_terms(logp, old, adv, mask, expert_mask=expert, expert_weights=w, expert_coef=2.0)
    assert close(terms.total, (sum(row0) + sum(row2) + 2.0 * sum(row1)) / 6)


def test_separate_normaliser_expert_gradient_is_joint_times_token_ratio():
    """The point of 'separate': an expert token's gradient is (all valid / expert tokens) times its
    gradient under 'joint' (here 6 / 2 = 3); on-policy gradients scale by 6 / 4."""
    logp, old, mask, adv, expert, w = _batch()
    grads = {}
    for norm in ("joint", "separate"):
        lp = logp.detach().clone().requires_grad_(True)
        tgrl_loss(lp, old, adv, mask, expert_mask=expert, expert_weights=w, expert_loss_norm=norm)[
            0
        ].backward()
        grads[norm] = lp.grad
    assert close(grads["separate"][1], 3.0 * grads["joint"][1])
    assert close(grads["separate"][0], 1.5 * grads["joint"][0])


def test_rows_leave_per_row_normalisers():
    """rows: the rows that count in per-row means (TRL 'grpo' counts all rows, even all-masked ones)."""
    logp, old, mask, adv, _, _ = _batch()
    mask = mask.clone()
    mask[2] = 0  # a truncated row with mask_truncated_completions: all tokens masked
    row0, _, _ = _hand_tokens(logp.detach(), old, adv.tolist())
    on0 = [
        math.exp(lp - lo) for lp, lo in zip(logp.detach()[1, :2].tolist(), old[1, :2].tolist(), strict=True)
    ]
    row1 = [-min(r * 1.5, min(max(r, 0.8), 1.2) * 1.5) for r in on0]
    everyone, _ = tgrl_loss(logp, old, adv, mask, loss_agg="seq_mean_token_mean")
    assert close(everyone, (sum(row0) / 3 + sum(row1) / 2 + 0.0) / 3)  # stock TRL: mean over all 3 rows
    kept, _ = tgrl_loss(logp, old, adv, mask, loss_agg="seq_mean_token_mean", rows=T([True, True, False]))
    assert close(kept, (sum(row0) / 3 + sum(row1) / 2) / 2)


def test_expert_bounds_sft_negative_advantage_and_teacher_is_cap():
    """sft with A < 0 stops at the p floor; teacher_is stops at the cap: bounded loss, no gradient
    beyond the bound, bounded tokens counted."""
    lp = T([[math.log(1e-6), math.log(0.5)]], requires_grad=True)
    one = T([[1, 1]])
    loss, met = tgrl_loss(lp, lp.detach(), T([-1.0]), one, expert_mask=T([True]), expert_ratio="sft")
    loss.backward()
    assert close(loss, (math.log(1e-3) + math.log(0.5)) / 2)  # -A * max(log p, log 1e-3), mean of 2
    assert lp.grad[0, 0].item() == 0.0 and close(lp.grad[0, 1], 0.5)
    assert met["n_exp_bounded"] == 1.0
    # a positive advantage is never floored (imitation must reach low-probability tokens)
    lp.grad = None
    loss, met = tgrl_loss(lp, lp.detach(), T([1.0]), one, expert_mask=T([True]), expert_ratio="sft")
    loss.backward()
    assert close(lp.grad, T([[-0.5, -0.5]])) and met["n_exp_bounded"] == 0.0
    # teacher_is: the teacher sampled token 0 at p = 1e-9, so the raw ratio is 1e3; capped at 3
    lp = T([[math.log(1e-6), math.log(0.5)]], requires_grad=True)
    teacher = T([[math.log(1e-9), math.log(0.25)]])
    loss, met = tgrl_loss(
        lp, lp.detach(), T([1.0]), one, expert_mask=T([True]), expert_ratio="teacher_is", teacher_logp=teacher
    )
    loss.backward()
    assert close(loss, -(3.0 + 2.0) / 2)
    assert lp.grad[0, 0].item() == 0.0 and close(lp.grad[0, 1], -2.0 / 2)
    assert met["n_exp_bounded"] == 1.0
    loss, _ = tgrl_loss(
        lp,
        lp.detach(),
        T([1.0]),
        one,
        expert_mask=T([True]),
        expert_ratio="teacher_is",
        teacher_logp=teacher,
        teacher_is_cap=1e4,
    )
    assert close(loss, -(1e3 + 2.0) / 2, tol=1e-3)


def test_aggregate_and_norm_errors():
    logp, old, mask, adv, _, _ = _batch()
    with pytest.raises(ValueError, match="separate"):
        tgrl_loss(logp, old, adv, mask, expert_loss_norm="both")
    with pytest.raises(ValueError, match="max_len"):
        aggregate(logp, mask, "seq_mean_token_sum_norm")
    assert aggregate(torch.zeros(2, 2), torch.zeros(2, 2), "seq_mean_token_mean").item() == 0.0
