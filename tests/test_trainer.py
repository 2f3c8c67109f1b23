"""TGRLTrainer on the tiny model with real TRL: GRPO equivalence, expert slots, token pass, loss."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.helpers import write_expert_set
from tgrl.modeling import VISION_SPECIAL_TOKENS, load_processor, vision_guard, vision_token_ids
from tgrl.rewards import get_reward_funcs
from tgrl.rl_data import build_rl_dataset, stored_teacher_logps
from tgrl.token_weights import group_advantages
from tgrl.trainer import BatchState, TGRLConfig, TGRLTrainer

G = 8  # num_generations in every test here


def tiny_args(tmp_path, cls=TGRLConfig, **overrides):
    args = dict(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=16,
        num_generations=G,
        max_completion_length=32,
        max_steps=2,
        learning_rate=1e-4,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        gradient_checkpointing=False,
        disable_tqdm=True,
        disable_dropout=True,
        seed=0,
    )
    if cls is TGRLConfig:
        args["log_data_order"] = False
    args.update(overrides)
    return cls(**args)


def load_model(path):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(str(path))


@pytest.fixture(scope="module")
def expert_file(synthetic_dir, tmp_path_factory):
    """Synthetic train rows with oracle expert trajectories; every 4th row has none (plain GRPO group)."""
    path = tmp_path_factory.mktemp("experts") / "train.jsonl"
    return write_expert_set(synthetic_dir, path, limit=16, without_expert=lambda i: i % 4 == 1)


def make_trainer(checkpoint, dataset, args):
    return TGRLTrainer(
        load_model(checkpoint),
        get_reward_funcs(["accuracy", "format"]),
        args=args,
        train_dataset=dataset,
        processing_class=load_processor(checkpoint),
    )


def experience(trainer):
    """One generation batch through the trainer's own experience path."""
    trainer.model.train()
    batch = next(iter(trainer.get_train_dataloader()))
    return batch, trainer._generate_and_score_completions(batch)


def completion_logps(trainer, inputs):
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model,
            ids,
            mask,
            inputs["completion_ids"].size(1),
            pixel_values=inputs["pixel_values"],
            image_grid_thw=inputs["image_grid_thw"],
            num_images=inputs["num_images"],
            mm_token_type_ids=inputs["mm_token_type_ids"],
        )
    return logps


def loss_and_grads(trainer, inputs):
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


# --------------------------------------------------------------------------------------------------
# GRPO = TGRL with guidance off


def _stock_and_ours(tiny_checkpoint, synthetic_dir, tmp_path, **overrides):
    """Stock trl.GRPOTrainer and TGRLTrainer with guidance off, and one prepared batch of the stock one's
    in a real PPO situation: pi_old != pi_theta (some ratios clip), a reference model, nonzero advantages."""
    from trl import GRPOConfig, GRPOTrainer

    dataset = build_rl_dataset(synthetic_dir / "train.jsonl", limit=8)
    rewards = get_reward_funcs(["accuracy", "format"])
    stock = GRPOTrainer(
        load_model(tiny_checkpoint),
        rewards,
        args=tiny_args(tmp_path / "a", GRPOConfig, **overrides),
        train_dataset=dataset,
        processing_class=load_processor(tiny_checkpoint),
    )
    ours = TGRLTrainer(
        load_model(tiny_checkpoint),
        rewards,
        args=tiny_args(tmp_path / "b", inject_mode="never", online_group_filter=False, **overrides),
        train_dataset=dataset,
        processing_class=load_processor(tiny_checkpoint),
    )
    _, inputs = experience(stock)
    ours.model.train()
    gen = torch.Generator().manual_seed(0)
    logps = completion_logps(stock, inputs)
    noise = lambda: 0.3 * torch.randn(logps.shape, generator=gen)  # noqa: E731
    inputs["old_per_token_logps"] = logps + noise()
    inputs["ref_per_token_logps"] = logps + noise()
    inputs["advantages"] = torch.randn(logps.size(0), generator=gen)
    return stock, ours, inputs


def _assert_same_loss_and_grads(stock, ours, inputs, cases):
    for loss_type, beta, eps_high, entropy_coef in cases:
        for trainer in (stock, ours):
            trainer.loss_type, trainer.beta, trainer.entropy_coef = loss_type, beta, entropy_coef
            trainer.epsilon_high = eps_high if eps_high is not None else trainer.epsilon_low
            trainer._entropy_bonus_enabled = entropy_coef != 0.0
            trainer.current_gradient_accumulation_steps = 1
        loss_a, grads_a = loss_and_grads(stock, inputs)
        loss_b, grads_b = loss_and_grads(ours, inputs)
        case = (loss_type, beta, eps_high, entropy_coef)
        assert torch.allclose(loss_a, loss_b, rtol=1e-5, atol=1e-7), (case, loss_a, loss_b)
        assert grads_a.keys() == grads_b.keys()
        for name in grads_a:
            assert torch.allclose(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-7), (case, name)


def test_guidance_off_equals_stock_grpo(tiny_checkpoint, synthetic_dir, tmp_path):
    """inject_mode never + no on-policy weights: loss and gradients equal trl.GRPOTrainer's on the same
    prepared batch, for every supported aggregation, with KL, clip-higher and the entropy bonus."""
    stock, ours, inputs = _stock_and_ours(tiny_checkpoint, synthetic_dir, tmp_path)
    cases = [
        ("dapo", 0.0, None, 0.0),
        ("grpo", 0.04, 0.28, 0.0),
        ("bnpo", 0.0, 0.2, 0.01),
        ("dr_grpo", 0.04, 0.28, 0.01),
        ("dapo", 0.1, 0.28, 0.01),
    ]
    _assert_same_loss_and_grads(stock, ours, inputs, cases)
    clipped = ours._metrics["train"]["clip_ratio/region_mean"]
    assert clipped and max(clipped) > 0  # the comparison covered clipped tokens


def test_truncated_rows_count_like_stock_grpo(tiny_checkpoint, synthetic_dir, tmp_path):
    """mask_truncated_completions: a truncated row keeps its place in 'grpo''s mean over rows (stock TRL
    averages over all rows, a masked row adding 0); the other types agree too."""
    stock, ours, inputs = _stock_and_ours(
        tiny_checkpoint, synthetic_dir, tmp_path, mask_truncated_completions=True
    )
    mask = inputs["completion_mask"].clone()
    mask[::3] = 0  # what TRL does to rows that hit max_completion_length without an end-of-turn token
    inputs["completion_mask"] = mask
    assert mask.any(1).sum() < mask.size(0)
    cases = [("grpo", 0.0, 0.28, 0.0), ("grpo", 0.04, 0.28, 0.01), ("dr_grpo", 0.04, None, 0.0)]
    _assert_same_loss_and_grads(stock, ours, inputs, cases)


# --------------------------------------------------------------------------------------------------
# expert slots, rewards, advantages, token pass


@pytest.fixture(scope="module")
def tgrl_batch(tiny_checkpoint, expert_file, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tgrl")
    dataset = build_rl_dataset(expert_file)
    trainer = make_trainer(tiny_checkpoint, dataset, tiny_args(tmp, online_group_filter=False))
    batch, out = experience(trainer)
    return trainer, batch, out


def test_expert_takes_the_last_slot_of_its_group(tgrl_batch):
    trainer, batch, out = tgrl_batch
    is_expert = out["is_expert"].tolist()
    for start in range(0, len(batch), G):
        text = batch[start]["expert_text"]
        assert is_expert[start : start + G] == [False] * (G - 1) + [bool(text)]
        if text:
            ids = trainer._expert_ids(text)
            row = start + G - 1
            n = int(out["completion_mask"][row].sum())
            assert tuple(out["completion_ids"][row, :n].tolist()) == ids
            assert ids[-1] == trainer._tokenizer.convert_tokens_to_ids("<|im_end|>")
    metrics = trainer._metrics["train"]
    n_groups_with_expert = sum(bool(batch[s]["expert_text"]) for s in range(0, len(batch), G))
    # the expert slot is never generated
    assert metrics["inject/generated"][-1] == len(batch) - n_groups_with_expert
    if n_groups_with_expert:
        assert metrics["accuracy/expert"][-1] == 1.0  # oracle trajectories are correct
        assert metrics["inject/rate"][-1] == n_groups_with_expert / (len(batch) // G)


def test_advantages_include_the_expert(tgrl_batch):
    trainer, batch, out = tgrl_batch
    rewards = trainer._batch.rewards_per_func @ trainer.reward_weights  # accuracy + format
    expected = group_advantages(rewards, G, std_norm=True, eps=1e-4)
    assert torch.allclose(out["advantages"], expected, atol=1e-5)
    for row in out["is_expert"].nonzero().flatten().tolist():
        assert out["advantages"][row] > 0  # a correct, well-formatted trajectory among weak rollouts


def test_token_weights_only_on_expert_rows(tgrl_batch):
    trainer, _, out = tgrl_batch
    w = out["expert_weights"]
    assert torch.isfinite(w).all()
    expert_rows = out["is_expert"]
    assert (w[~expert_rows] == 0).all()
    p_min = trainer.args.p_min
    metrics = trainer._metrics["train"]
    assert "vis_dep/expert" in metrics and "vis_dep/on_policy" not in metrics  # pass ran on experts only
    for row in expert_rows.nonzero().flatten().tolist():
        kept = out["completion_mask"][row].bool() & (w[row] > 0)
        if kept.any():  # vis_dep: mean 1 over the kept tokens of the trajectory
            assert abs(w[row][kept].mean().item() - 1.0) < 1e-5
    assert 0.0 <= metrics["expert/w_zeroed"][-1] <= 1.0 and p_min == 1e-4


def test_loss_with_experts_equals_a_hand_computation(tgrl_batch):
    """The trainer's loss on a real batch, recomputed by hand in plain Python from the same per-token
    log-probs: PPO-clip on on-policy tokens (pi_old = pi_theta here, so rho = 1: -A per token), the
    shaped expert term -A w p / (p + gamma) on expert tokens, one token mean over the generation batch."""
    trainer, _, out = tgrl_batch
    trainer.current_gradient_accumulation_steps = 1
    loss, grads = loss_and_grads(trainer, out)
    assert grads and all(torch.isfinite(g).all() for g in grads.values())
    logps = completion_logps(trainer, out).tolist()
    mask, is_expert = out["completion_mask"].tolist(), out["is_expert"].tolist()
    adv, w = out["advantages"].tolist(), out["expert_weights"].tolist()
    gamma, total, count = trainer.args.expert_gamma, 0.0, 0
    for i, row in enumerate(logps):
        for t, logp in enumerate(row):
            if not mask[i][t]:
                continue
            count += 1
            if is_expert[i]:
                p = math.exp(logp)
                total += -adv[i] * w[i][t] * p / (p + gamma)
            else:
                total += -adv[i]
    assert is_expert.count(True) >= 1 and count == out["num_items_in_batch"].item()
    assert loss.item() == pytest.approx(total / count, rel=1e-4, abs=1e-6)
    assert trainer._metrics["train"]["loss/expert"]


def test_microbatch_without_expert_tokens_adds_zero(tgrl_batch):
    trainer, _, out = tgrl_batch
    trainer.current_gradient_accumulation_steps = 1
    no_expert = {**out, "is_expert": torch.zeros_like(out["is_expert"])}
    plain = {k: v for k, v in out.items() if k not in ("is_expert", "expert_weights")}
    a, grads_a = loss_and_grads(trainer, no_expert)
    b, grads_b = loss_and_grads(trainer, plain)
    assert a == b
    assert all(torch.equal(grads_a[n], grads_b[n]) for n in grads_a)


def test_sft_ratio_with_zeroed_weights_has_no_nan(tgrl_batch):
    trainer, _, out = tgrl_batch
    trainer.current_gradient_accumulation_steps = 1
    weights = out["expert_weights"].clone()
    weights[:, ::2] = 0.0  # w = 0 tokens: 0 * log p must not become NaN
    trainer.args.expert_ratio = "sft"
    try:
        loss, grads = loss_and_grads(trainer, {**out, "expert_weights": weights})
    finally:
        trainer.args.expert_ratio = "shaped"
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads.values())


def test_expert_term_raises_expert_token_probability(tgrl_batch):
    """Only the expert term active (on-policy advantages 0): one SGD step makes the expert tokens likelier."""
    trainer, _, out = tgrl_batch
    assert out["is_expert"].any()  # the seeded batch holds an expert group (the test needs one)
    trainer.current_gradient_accumulation_steps = 1
    inputs = {**out, "advantages": out["is_expert"].float()}
    expert_mask = out["completion_mask"].bool() & out["is_expert"].unsqueeze(1)
    state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    before = completion_logps(trainer, inputs)[expert_mask].mean()
    loss, _ = loss_and_grads(trainer, inputs)
    with torch.no_grad():
        for p in trainer.model.parameters():
            if p.grad is not None:
                p -= 0.5 * p.grad
    after = completion_logps(trainer, inputs)[expert_mask].mean()
    trainer.model.load_state_dict(state)
    assert loss < 0 and after > before


# --------------------------------------------------------------------------------------------------
# switches


def test_on_fail_gate_keeps_experts_only_for_failing_groups(tgrl_batch):
    trainer, batch, _ = tgrl_batch
    rows = list(batch[: 2 * G])
    tok = trainer._tokenizer
    right = f"<think>x</think><answer>{rows[0]['solution']}</answer>"
    texts = ["<answer>nothing</answer>"] * (2 * G)
    texts[3] = right  # group 0 has one correct rollout, group 1 none
    completion_ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    slots = [G - 1, 2 * G - 1]
    trainer.args.inject_gate = 0
    assert trainer._gate_slots(slots, rows, completion_ids) == [2 * G - 1]
    trainer.args.inject_gate = 1
    assert trainer._gate_slots(slots, rows, completion_ids) == slots
    trainer.args.inject_gate = 0


def test_adv_on_only_and_online_group_filter(tgrl_batch):
    trainer, _, out = tgrl_batch
    n = out["completion_ids"].size(0)
    # group 0: on-policy rewards all 0, expert 1; group 1: all tie at 1
    rpf = torch.zeros(n, 2)
    rpf[G - 1, 0] = 1.0
    rpf[G:, 0] = 1.0
    is_expert = torch.zeros(n, dtype=torch.bool)
    is_expert[G - 1] = True
    trainer._batch.rewards_per_func = rpf
    trainer.args.adv_group, trainer.args.online_group_filter = "on_only", True
    try:
        adjusted = {**out, "is_expert": is_expert}
        trainer._adjust_advantages(adjusted)
    finally:
        trainer.args.adv_group, trainer.args.online_group_filter = "mixed", False
    # on_only: mean 0 and std 0 from the tied on-policy members -> A = r - mean (no division)
    assert adjusted["advantages"][G - 1] == 1.0 and (adjusted["advantages"][: G - 1] == 0).all()
    assert adjusted["row_keep"].tolist() == [1.0] * G + [0.0] * G  # group 1 ties: dropped
    assert adjusted["num_items_in_batch"] == out["completion_mask"][:G].sum()


def test_diagnostic_pass_runs_on_policy_rows_only_when_asked(tgrl_batch, monkeypatch):
    trainer, batch, out = tgrl_batch
    seen = []
    original = trainer._forward_rows

    def spy(model, out_, rows, perturb, compute_entropy):
        seen.append((tuple(rows), perturb))
        return original(model, out_, rows, perturb, compute_entropy)

    monkeypatch.setattr(trainer, "_forward_rows", spy)
    experts = tuple(out["is_expert"].nonzero().flatten().tolist())
    trainer._token_pass(dict(out), batch)
    assert {rows for rows, _ in seen} <= {experts}
    seen.clear()
    trainer.args.vis_dep_diag_every = 1
    try:
        trainer._token_pass(dict(out), batch)
    finally:
        trainer.args.vis_dep_diag_every = 0
    assert any(perturb and len(rows) == len(batch) for rows, perturb in seen)
    assert trainer._metrics["train"]["vis_dep/on_policy"]


def test_generation_subset_matches_tokenizing_the_subset(tgrl_batch):
    trainer, batch, _ = tgrl_batch
    from trl.data_utils import prepare_multimodal_messages

    prompts = [prepare_multimodal_messages(r["prompt"], images=r["images"]) for r in batch]
    prompt_ids, images, fields = trainer._tokenize_prompts(prompts)
    keep = [0, 3, 9, 15]
    sub_ids, sub_images, sub_fields = trainer._select_prompts(keep, prompt_ids, images, fields)
    ref_ids, _, ref_fields = trainer._tokenize_prompts([prompts[i] for i in keep])
    assert sub_ids == ref_ids and len(sub_images) == len(keep)
    assert torch.equal(sub_fields["pixel_values"], ref_fields["pixel_values"])
    assert torch.equal(sub_fields["image_grid_thw"], ref_fields["image_grid_thw"])
    assert sub_fields["mm_token_type_ids"] == ref_fields["mm_token_type_ids"]


def test_vision_tokens_are_suppressed(tgrl_batch):
    trainer, _, _ = tgrl_batch
    tok = trainer._tokenizer
    ids = vision_token_ids(tok)
    assert set(ids) <= set(trainer.generation_config.suppress_tokens)
    vllm = vision_guard({"bad_words": ["foo"]}, tok, use_vllm=True)
    assert set(vllm["bad_words"]) == {"foo", *VISION_SPECIAL_TOKENS}


def test_config_rejects_groups_split_across_micro_batches(tmp_path):
    with pytest.raises(ValueError, match="divisible by num_generations"):
        tiny_args(
            tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=1, steps_per_generation=1
        )
    with pytest.raises(ValueError, match="inject_mode"):
        tiny_args(tmp_path, inject_mode="sometimes")
    tiny_args(tmp_path, per_device_train_batch_size=4, steps_per_generation=2)  # 4 x 2 = one group: fine


def test_p_min_default_depends_on_the_ratio(tmp_path):
    # (building a TrainingArguments resets accelerate's state: keep config-only tests before the next
    # test that builds a trainer)
    assert tiny_args(tmp_path, expert_ratio="shaped").p_min == 1e-4
    assert tiny_args(tmp_path, expert_ratio="raw_p").p_min == 1e-4
    assert tiny_args(tmp_path, expert_ratio="sft").p_min == 0.0
    assert tiny_args(tmp_path, expert_ratio="teacher_is").p_min == 0.0
    assert tiny_args(tmp_path, expert_ratio="sft", p_min=0.01).p_min == 0.01  # an explicit value wins
    with pytest.raises(ValueError, match="expert_loss_norm"):
        tiny_args(tmp_path, expert_loss_norm="mixed")
    with pytest.raises(ValueError, match="teacher_is_cap"):
        tiny_args(tmp_path, teacher_is_cap=0.0)


def test_overlong_expert_is_an_error_naming_the_row(tiny_checkpoint, expert_file, tmp_path):
    dataset = build_rl_dataset(expert_file)
    with pytest.raises(ValueError, match=r"row syn-train-\d+: expert trajectory has \d+ tokens"):
        make_trainer(tiny_checkpoint, dataset, tiny_args(tmp_path, max_completion_length=8))


# --------------------------------------------------------------------------------------------------
# checkpoints: a killed run resumes to the same step, data order and parameters


class Kill(Exception):
    pass


def test_killed_run_resumes_to_the_same_state(tiny_checkpoint, expert_file, tmp_path):
    from transformers import TrainerCallback

    from tgrl.runs import resolve_resume
    from tgrl.utils import read_jsonl

    dataset = build_rl_dataset(expert_file)

    def args(out):
        return tiny_args(
            tmp_path,
            output_dir=str(out),
            max_steps=4,
            save_strategy="steps",
            save_steps=2,
            log_data_order=True,
        )

    def order(out):
        by_step = {row["step"]: row["ids"] for _, row in read_jsonl(out / "data_order.jsonl")}
        return [by_step[s] for s in sorted(by_step)]

    full = make_trainer(tiny_checkpoint, dataset, args(tmp_path / "full"))
    full.train()

    class KillAtStep3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise Kill()

    killed = make_trainer(tiny_checkpoint, dataset, args(tmp_path / "killed"))
    killed.add_callback(KillAtStep3())
    with pytest.raises(Kill):
        killed.train()
    checkpoint = resolve_resume(str(tmp_path / "killed"), "auto")
    assert checkpoint.endswith("checkpoint-2")
    resumed = make_trainer(tiny_checkpoint, dataset, args(tmp_path / "killed"))
    resumed.train(resume_from_checkpoint=checkpoint)

    assert resumed.state.global_step == full.state.global_step == 4
    assert order(tmp_path / "killed") == order(tmp_path / "full")
    for (name, a), (_, b) in zip(
        full.model.named_parameters(), resumed.model.named_parameters(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-6), name


def test_teacher_is_reads_stored_teacher_logprobs(tgrl_batch):
    trainer, batch, out = tgrl_batch
    rows = [dict(r) for r in batch]
    experts = out["is_expert"].nonzero().flatten().tolist()
    assert experts  # the seeded batch holds an expert group (the test needs one)
    lengths = {i: len(trainer._full_expert_ids(rows[i]["expert_text"])) for i in experts}
    for i in experts:
        rows[i]["expert_teacher_logprobs"] = [-0.5] * lengths[i]

    def teacher_logps(rows):
        shape = out["completion_mask"].shape
        return stored_teacher_logps(rows, out["is_expert"], trainer._full_expert_ids, shape)

    teacher = teacher_logps(rows)
    width = teacher.size(1)
    for i in experts:
        n = min(lengths[i], width)  # an overlong expert is cut like its tokens
        assert (teacher[i, :n] == -0.5).all() and (teacher[i, n:] == 0).all()
    assert (teacher[~out["is_expert"]] == 0).all()
    # A file scored with another tokenizer (one value short of the end-of-turn token is allowed).
    rows[experts[0]]["expert_teacher_logprobs"] = [-0.5] * (lengths[experts[0]] + 3)
    with pytest.raises(ValueError, match="another tokenizer, or a stale file"):
        teacher_logps(rows)
    rows[experts[0]]["expert_teacher_logprobs"] = [-0.5] * (lengths[experts[0]] - 1)
    teacher_logps(rows)
    trainer.args.expert_ratio = "teacher_is"
    trainer.current_gradient_accumulation_steps = 1
    try:
        loss, grads = loss_and_grads(trainer, {**out, "expert_teacher_logps": teacher})
    finally:
        trainer.args.expert_ratio = "shaped"
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads.values())
    rows[experts[0]]["expert_teacher_logprobs"] = None
    with pytest.raises(ValueError, match="expert_ratio .teacher_is. needs meta.expert.teacher_logprobs"):
        teacher_logps(rows)


# --------------------------------------------------------------------------------------------------
# no silent fallbacks, bounds and on-policy-only terms


def test_injection_without_aligned_rows_is_an_error_not_grpo(tgrl_batch):
    """A TRL that passes prompts differently must stop the run, not silently train plain GRPO."""
    trainer, batch, _ = tgrl_batch
    trainer.model.train()
    state = trainer._batch  # the fixture's batch, which later tests read
    trainer._batch = BatchState(rows=None)
    with pytest.raises(RuntimeError, match="silently be plain GRPO"):
        trainer._generate_single_turn([[1, 2]] * G, None, {}, G)
    trainer._batch = BatchState(rows=list(batch))
    try:
        with pytest.raises(RuntimeError, match=f"{len(batch)} dataset rows for {G} prompts"):
            trainer._generate_single_turn([[1, 2]] * G, None, {}, G)
    finally:
        trainer._batch = state


def test_on_fail_gate_counts_on_policy_rollouts_only(tgrl_batch):
    """docs/design.md#53-groups: the slot about to be replaced is not an on-policy rollout; its text must not
    count."""
    trainer, batch, _ = tgrl_batch
    rows = list(batch[:G])
    tok = trainer._tokenizer
    texts = ["<answer>nothing</answer>"] * G
    texts[G - 1] = f"<think>x</think><answer>{rows[0]['solution']}</answer>"  # only the expert slot is right
    completion_ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    trainer.args.inject_gate = 0
    assert trainer._gate_slots([G - 1], rows, completion_ids) == [G - 1]


def test_kl_and_entropy_bonus_on_on_policy_tokens_only(tgrl_batch):
    """The entropy bonus is the mean entropy of on-policy tokens; KL is averaged over on-policy tokens
    (expert tokens in neither the term nor its normaliser)."""
    trainer, _, out = tgrl_batch
    trainer.current_gradient_accumulation_steps = 1
    assert out["is_expert"].any()
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    attention = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
    with torch.no_grad():
        logps, entropies, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model,
            ids,
            attention,
            out["completion_ids"].size(1),
            compute_entropy=True,
            pixel_values=out["pixel_values"],
            image_grid_thw=out["image_grid_thw"],
            num_images=out["num_images"],
            mm_token_type_ids=out["mm_token_type_ids"],
        )
    on = out["completion_mask"].bool() & ~out["is_expert"].unsqueeze(1)
    base = trainer.compute_loss(trainer.model, out).item()
    trainer.entropy_coef = 0.5
    try:
        bonus = trainer.compute_loss(trainer.model, out).item()
    finally:
        trainer.entropy_coef = 0.0
    assert bonus == pytest.approx(base - 0.5 * entropies[on].mean().item(), abs=1e-5)
    # KL: ref = logp - 0.3 on every token -> k3 = exp(-0.3) + 0.3 - 1 on each on-policy token; the mean
    # over on-policy tokens is k3 whatever the expert tokens hold (they hold 100 here)
    ref = torch.where(on, logps - 0.3, logps + 100.0)
    trainer.beta = 0.1
    try:
        with_kl = trainer.compute_loss(trainer.model, {**out, "ref_per_token_logps": ref}).item()
    finally:
        trainer.beta = 0.0
    k3 = math.exp(-0.3) + 0.3 - 1
    n_on, n_all = on.sum().item(), out["num_items_in_batch"].item()
    assert with_kl == pytest.approx(base + 0.1 * k3 * n_on / out["num_on_tokens"].item(), abs=1e-5)
    assert out["num_on_tokens"].item() == n_on and n_on < n_all


def test_token_counts_split_the_generation_batch(tgrl_batch):
    _, _, out = tgrl_batch
    valid = out["completion_mask"]
    is_exp = out["is_expert"].unsqueeze(1)
    assert out["num_exp_tokens"].item() == (valid * is_exp).sum().item() > 0
    assert out["num_on_tokens"].item() + out["num_exp_tokens"].item() == out["num_items_in_batch"].item()


def test_separate_normaliser_and_coef_scale_the_expert_gradient(tgrl_batch):
    """Under 'separate' the expert gradient is (all tokens / expert tokens) x its 'joint' gradient and
    the on-policy gradient (all / on-policy) x; expert_coef scales the expert part linearly. Checked on
    the trainer's own loss through the gradient of the expert part: g(coef=1) - g(coef=0)."""
    trainer, _, out = tgrl_batch
    trainer.current_gradient_accumulation_steps = 1

    def grads(norm, coef):
        trainer.args.expert_loss_norm, trainer.args.expert_coef = norm, coef
        try:
            return loss_and_grads(trainer, out)[1]
        finally:
            trainer.args.expert_loss_norm, trainer.args.expert_coef = "joint", 1.0

    n_all = out["num_items_in_batch"].item()
    n_exp, n_on = out["num_exp_tokens"].item(), out["num_on_tokens"].item()
    joint_on, joint_full = grads("joint", 0.0), grads("joint", 1.0)
    sep_on, sep_full, sep_half = grads("separate", 0.0), grads("separate", 1.0), grads("separate", 0.5)
    name = max(joint_full, key=lambda n: (joint_full[n] - joint_on[n]).norm().item())
    g_exp_joint = joint_full[name] - joint_on[name]
    assert torch.allclose(sep_full[name] - sep_on[name], g_exp_joint * n_all / n_exp, rtol=1e-3, atol=1e-7)
    assert torch.allclose(sep_half[name] - sep_on[name], 0.5 * (sep_full[name] - sep_on[name]), atol=1e-7)
    assert torch.allclose(sep_on[name], joint_on[name] * n_all / n_on, rtol=1e-3, atol=1e-7)


def test_grad_share_diagnostic_matches_the_expert_gradient(tgrl_batch):
    trainer, _, out = tgrl_batch
    trainer.current_gradient_accumulation_steps = 1
    metrics = trainer._metrics["train"]
    trainer.args.expert_coef = 0.0
    g_on = loss_and_grads(trainer, out)[1]
    trainer.args.expert_coef, trainer.args.grad_share_every = 1.0, 1
    try:
        g_full = loss_and_grads(trainer, out)[1]
    finally:
        trainer.args.grad_share_every = 0
    expected_exp = torch.sqrt(sum(((g_full[n] - g_on[n]) ** 2).sum() for n in g_full)).item()
    expected_on = torch.sqrt(sum((g**2).sum() for g in g_on.values())).item()
    assert metrics["grad/norm_expert"][-1] == pytest.approx(expected_exp, rel=1e-3)
    assert metrics["grad/norm_on_policy"][-1] == pytest.approx(expected_on, rel=1e-3)
    assert metrics["grad/expert_share"][-1] == pytest.approx(
        expected_exp / (expected_exp + expected_on), rel=1e-3
    )
    assert -1.0 <= metrics["grad/cos"][-1] <= 1.0


def test_expert_coef_schedule():
    from tgrl.tgrl_config import expert_coef_at

    assert expert_coef_at(0, 100, 0.5) == 0.5
    assert expert_coef_at(5, 100, 0.5, warmup=10) == 0.25  # linear warm-up from 0
    assert expert_coef_at(10, 100, 0.5, "linear", end=0.1, warmup=10) == 0.5
    assert expert_coef_at(55, 100, 0.5, "linear", end=0.1, warmup=10) == pytest.approx(0.3)
    assert expert_coef_at(100, 100, 0.5, "cosine", end=0.02) == pytest.approx(0.02)
    assert expert_coef_at(50, 100, 0.5, "cosine", end=0.0) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="expert_coef_schedule"):
        expert_coef_at(1, 10, 1.0, "step")


def test_fact_token_probability_is_logged(tgrl_batch):
    """expert/p_fact: mean pi_old over the expert tokens that state the scene's counts (the digits)."""
    trainer, batch, out = tgrl_batch
    metrics = trainer._metrics["train"]
    trainer._token_pass(dict(out), batch)
    logps = completion_logps(trainer, out)
    tok = trainer._tokenizer
    values = []
    for row in out["is_expert"].nonzero().flatten().tolist():
        ids = out["completion_ids"][row].tolist()
        digits = [j for j, i in enumerate(ids[:8]) if tok.decode([i]).strip().isdigit()]
        assert [tok.decode([ids[j]]) for j in trainer._fact_positions(batch[row]["expert_text"])] == [
            tok.decode([ids[j]]) for j in digits[:2]
        ]
        values += [logps[row, j].exp().item() for j in digits[:2]]
    assert metrics["expert/p_fact"][-1] == pytest.approx(sum(values) / len(values), rel=1e-4)
    exp_tokens = out["completion_mask"].bool() & out["is_expert"].unsqueeze(1)
    p = logps.exp()[exp_tokens]
    assert metrics["expert/share_low"][-1] == pytest.approx((p < 0.5).float().mean().item(), abs=1e-6)
    assert metrics["expert/p_low"][-1] == pytest.approx(p[p < 0.5].mean().item(), rel=1e-4)


def test_unscorable_rows_leave_the_reward_metrics(tgrl_batch):
    trainer, batch, out = tgrl_batch
    n = out["completion_ids"].size(0)
    rpf = torch.ones(n, 2)
    rpf[:3] = float("nan")  # three rollouts no reward function could score
    trainer._batch.rewards_per_func = rpf
    trainer._log_experience(out, batch)
    assert trainer._metrics["train"]["reward/on_policy"][-1] == pytest.approx(2.0)  # not diluted by zeros


def test_completion_table_logs_the_advantages_used(tgrl_batch):
    trainer, _, out = tgrl_batch
    n = out["completion_ids"].size(0)
    rpf = torch.zeros(n, 2)
    rpf[G - 1, 0] = 1.0
    is_expert = torch.zeros(n, dtype=torch.bool)
    is_expert[G - 1] = True
    trainer._batch.rewards_per_func = rpf
    trainer._logs["advantages"].extend([9.0] * n)  # what TRL logged (mixed group)
    trainer.args.adv_group = "on_only"
    try:
        adjusted = {**out, "is_expert": is_expert}
        trainer._adjust_advantages(adjusted)
    finally:
        trainer.args.adv_group = "mixed"
    assert list(trainer._logs["advantages"])[-n:] == adjusted["advantages"].tolist()


def test_plan_token_pass():
    """Which rows get which forward: hand cases (rows 1 and 3 are experts)."""
    from tgrl.token_weights import plan_token_pass

    rows = [False, True, False, True]
    grpo = plan_token_pass(rows, None, None, diagnostic=False, has_old_logps=True)
    assert grpo.clean_rows == grpo.perturbed_rows == [] and grpo.reuse_old_logps
    tgrl = plan_token_pass(rows, "vis_dep", None, diagnostic=False, has_old_logps=False)
    assert tgrl.clean_rows == tgrl.perturbed_rows == [1, 3] and not tgrl.needs_entropy
    luffy = plan_token_pass(rows, "none", None, diagnostic=False, has_old_logps=False)
    assert luffy.clean_rows == [1, 3] and luffy.perturbed_rows == []  # p_t only: no s_t needed
    diag = plan_token_pass(rows, "none", None, diagnostic=True, has_old_logps=False)
    assert diag.clean_rows == diag.perturbed_rows == [0, 1, 2, 3]
    grpo_diag = plan_token_pass([False] * 3, None, None, diagnostic=True, has_old_logps=True)
    assert grpo_diag.perturbed_rows == [0, 1, 2] and grpo_diag.reuse_old_logps
    on_weights = plan_token_pass(rows, "none", "vis_topk", diagnostic=False, has_old_logps=False)
    assert on_weights.clean_rows == [0, 1, 2, 3] and on_weights.perturbed_rows == [0, 2]
    entropy = plan_token_pass(rows, "entropy_topk", None, diagnostic=False, has_old_logps=True)
    assert entropy.needs_entropy and not entropy.reuse_old_logps and entropy.perturbed_rows == []


def expert_rows_inputs(batch, rows: list[int]) -> tuple[list, list, list]:
    """(questions, images, expert texts) of the batch's expert rows: what tgrl.probe scores."""
    questions = [batch[i]["prompt"][-1]["content"][-1]["text"] for i in rows]
    return questions, [batch[i]["images"] for i in rows], [batch[i]["expert_text"] for i in rows]


def test_probe_scores_expert_tokens_like_the_trainer(tgrl_batch):
    """tgrl.probe's teacher forcing uses the trainer's token layout: the same expert text gets the same
    per-token log-probs as the trainer's own forward over its expert slot."""
    from tgrl.probe import completion_logps as probe_logps

    trainer, batch, out = tgrl_batch
    logps = completion_logps(trainer, out)
    rows = out["is_expert"].nonzero().flatten().tolist()
    assert rows
    probe = probe_logps(
        trainer.model,
        trainer.processing_class,
        *expert_rows_inputs(batch, rows),
    )
    for row, values in zip(rows, probe, strict=True):
        n = int(out["completion_mask"][row].sum())
        assert values.numel() == n
        assert torch.allclose(values, logps[row, :n], atol=1e-4)


def test_probe_at_a_temperature_is_the_trainers_policy_at_it(
    tgrl_batch, tiny_checkpoint, expert_file, tmp_path
):
    """Runs that sample at T train softmax(logits / T) (TRL folds 1 / T into the LM head); the probe's
    --temperature scores that same policy, and differs from T = 1 on the same tokens."""
    from tgrl.probe import completion_logps as probe_logps

    trainer, batch, out = tgrl_batch
    hot = make_trainer(
        tiny_checkpoint,
        build_rl_dataset(expert_file),
        tiny_args(tmp_path, online_group_filter=False, temperature=0.3),
    )
    logps = completion_logps(hot, out)  # same weights (the checkpoint), the T = 0.3 policy
    rows = out["is_expert"].nonzero().flatten().tolist()
    inputs = expert_rows_inputs(batch, rows)
    plain = probe_logps(trainer.model, trainer.processing_class, *inputs)
    probe = probe_logps(trainer.model, trainer.processing_class, *inputs, temperature=0.3)
    for row, values, at_one in zip(rows, probe, plain, strict=True):
        n = int(out["completion_mask"][row].sum())
        assert torch.allclose(values, logps[row, :n], atol=1e-4)
        assert not torch.allclose(values, at_one, atol=1e-3)


def test_probe_visual_dependency_is_the_trainers(tgrl_batch):
    """One s_t definition: the evaluation-time pass (tgrl.probe, used by --visual-dependency and the
    trajectory report) gives the trainer's token-pass s_t for the same expert text and perturbation
    (full_mask: no random draw, so both sides see the same I~)."""
    from tgrl.probe import Perturbation, completion_visual_dependency

    trainer, batch, out = tgrl_batch
    rows = out["is_expert"].nonzero().flatten().tolist()
    mode, prob = trainer.args.perturb_mode, trainer.args.perturb_prob
    trainer.args.perturb_mode, trainer.args.perturb_prob = "full_mask", 1.0
    try:
        trainer._token_pass(dict(out), batch)
        s = trainer._batch.token_quantities["s"]
    finally:
        trainer.args.perturb_mode, trainer.args.perturb_prob = mode, prob
    probe = completion_visual_dependency(
        trainer.model,
        trainer.processing_class,
        *expert_rows_inputs(batch, rows),
        Perturbation("full_mask", 1.0),
    )
    for row, dep in zip(rows, probe, strict=True):
        n = int(out["completion_mask"][row].sum())
        assert dep.s.numel() == n and float(s[row, :n].max()) > 0
        assert torch.allclose(dep.s, s[row, :n], atol=1e-3)


def test_completions_log_holds_the_token_pass_values(tgrl_batch):
    """log_completions_every: one row per completion with its tokens, and s_t / w_t where the token pass
    computed them (expert rows under vis_dep), for eval/report_trajectories.py."""
    from tgrl.metrics import COMPLETIONS_FILE
    from tgrl.utils import read_jsonl

    trainer, batch, out = tgrl_batch
    path = Path(trainer.args.output_dir) / COMPLETIONS_FILE
    path.unlink(missing_ok=True)
    trainer._token_pass(dict(out), batch)
    trainer._log_completions(out, batch)
    rows = [row for _, row in read_jsonl(path)]
    assert len(rows) == out["completion_ids"].size(0)
    w = trainer._batch.token_quantities["w"]
    for i, row in enumerate(rows):
        n = int(out["completion_mask"][i].sum())
        assert row["id"] == batch[i]["id"] and len(row["tokens"]) == n and row["step"] == 0
        assert row["is_expert"] == bool(out["is_expert"][i])
        if row["is_expert"]:
            assert len(row["s"]) == len(row["w"]) == n
            assert row["w"] == pytest.approx(w[i, :n].tolist(), abs=1e-4)
            assert row["text"].startswith("<think>") and row["fact_accuracy"] is not None
        else:
            assert row["s"] is None and row["w"] is None
