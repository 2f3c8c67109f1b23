"""Prefix sharing in the update (tgrl/prefix_sharing.py) against TRL's per-row forward, on real batches."""

from __future__ import annotations

import pytest
import torch

from tests.test_trainer import experience, make_trainer, tiny_args
from tgrl.prefix_sharing import (
    prompt_groups,
    share_prompt_prefix_blocker,
    shared_prefix_logps_and_entropies,
)
from tgrl.rl_data import build_rl_dataset
from tgrl.trainer import TGRLConfig


@pytest.fixture(scope="module")
def batch(tiny_checkpoint, synthetic_dir, tmp_path_factory):
    """A TGRL trainer (experts in the last slot of 3 of 4 groups) and one generation batch of its own."""
    from tests.helpers import write_expert_set

    tmp = tmp_path_factory.mktemp("prefix")
    experts = write_expert_set(
        synthetic_dir, tmp / "train.jsonl", limit=16, without_expert=lambda i: i % 4 == 1
    )
    trainer = make_trainer(
        tiny_checkpoint, build_rl_dataset(experts), tiny_args(tmp, online_group_filter=False)
    )
    trainer.current_gradient_accumulation_steps = 1
    _, out = experience(trainer)
    return trainer, out


def _loss_logps_grads(trainer, out, share: bool):
    trainer.args.share_prompt_prefix = share
    trainer.model.zero_grad(set_to_none=True)
    logps, entropies, _ = trainer._policy_logps_and_entropies(trainer.model, out)
    loss = trainer.compute_loss(trainer.model, out)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])
    return loss.detach(), logps.detach(), entropies.detach(), grads


def test_shared_prefix_gives_trls_logps_entropies_loss_and_gradient(batch, monkeypatch):
    trainer, out = batch
    backbone = trainer.model.base_model
    prompt_rows = []
    forward = backbone.forward

    def spy(*args, **kwargs):
        if kwargs.get("use_cache"):
            prompt_rows.append(kwargs["input_ids"].size(0))
        return forward(*args, **kwargs)

    monkeypatch.setattr(backbone, "forward", spy)
    loss_a, logps_a, ent_a, grads_a = _loss_logps_grads(trainer, out, share=False)
    assert prompt_rows == []  # TRL's per-row forward: no prompt pass
    loss_b, logps_b, ent_b, grads_b = _loss_logps_grads(trainer, out, share=True)
    rows = out["prompt_ids"].size(0)
    assert prompt_rows == [rows // 8] * 2  # a prompt pass per forward (logps, then the loss), a row per group
    mask = out["completion_mask"].bool()
    assert mask.sum() > 0 and out["is_expert"].bool().any()
    assert (logps_a - logps_b)[mask].abs().max() < 1e-5
    assert (ent_a - ent_b)[mask].abs().max() < 1e-5
    assert torch.allclose(loss_a, loss_b, rtol=1e-5, atol=1e-7)
    assert (grads_a - grads_b).norm() / grads_a.norm() < 1e-5


def test_text_only_left_padded_prompts_match_trl(batch):
    """No image: the model's own positions (cache offsets), left padding on one prompt."""
    trainer, _ = batch
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(10, 200, (2, 9), generator=gen)
    prompt_mask = torch.ones_like(prompts)
    prompt_mask[1, :3] = 0  # the second prompt is 3 tokens shorter (left padding)
    completions = torch.randint(10, 200, (6, 5), generator=gen)
    completion_mask = torch.ones_like(completions)
    completion_mask[2, 3:] = 0  # one completion ended early
    rows = torch.tensor([0, 0, 0, 1, 1, 1])
    ids = torch.cat([prompts[rows], completions], 1)
    mask = torch.cat([prompt_mask[rows], completion_mask], 1)
    with torch.no_grad():
        shared = shared_prefix_logps_and_entropies(trainer.model, ids, mask, 5, compute_entropy=True)
        stock, stock_ent, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, ids, mask, 5, compute_entropy=True
        )
    assert shared is not None
    keep = completion_mask.bool()
    assert (shared[0] - stock)[keep].abs().max() < 1e-5
    assert (shared[1] - stock_ent)[keep].abs().max() < 1e-5


def test_no_shared_prompt_means_trls_forward(batch):
    trainer, out = batch
    one_per_group = torch.arange(0, out["prompt_ids"].size(0), 8)
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)[one_per_group]
    mask = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)[one_per_group]
    assert shared_prefix_logps_and_entropies(trainer.model, ids, mask, out["completion_ids"].size(1)) is None


def test_a_row_with_other_pixels_is_its_own_prompt():
    ids = torch.tensor([[1, 2, 3], [1, 2, 3], [1, 2, 3], [0, 2, 3]])
    mask = torch.ones_like(ids)
    pixels = [torch.zeros(4, 2), torch.zeros(4, 2), torch.ones(4, 2), torch.zeros(4, 2)]
    grids = [torch.tensor([[1, 2, 2]])] * 4
    first, inverse = prompt_groups(ids, mask, pixels, grids)
    assert first.tolist() == [0, 2, 3]
    assert inverse.tolist() == [0, 0, 1, 2]
    mask[1, 0] = 0  # same ids, other padding: another prompt
    assert prompt_groups(ids, mask, pixels, grids)[0].tolist() == [0, 1, 2, 3]


def test_gradient_checkpointing_is_refused(tmp_path):
    with pytest.raises(ValueError, match="share_prompt_prefix needs the KV cache"):
        tiny_args(tmp_path, share_prompt_prefix=True, gradient_checkpointing=True)


def test_a_wrapped_model_falls_back_with_one_line(batch, capsys):
    trainer, out = batch
    wrapped = torch.nn.ModuleDict({"module": trainer.model})
    assert "ModuleDict" in share_prompt_prefix_blocker(wrapped)
    assert share_prompt_prefix_blocker(trainer.model) is None
    trainer.args.share_prompt_prefix = True
    inputs = {"pixel_values": out["pixel_values"]}
    assert not trainer._can_share_prompt_prefix(wrapped, inputs)
    assert not trainer._can_share_prompt_prefix(wrapped, inputs)
    lines = [line for line in capsys.readouterr().out.splitlines() if "share_prompt_prefix" in line]
    assert len(lines) == 1 and "per-row forward" in lines[0]
    assert trainer._can_share_prompt_prefix(trainer.model, inputs)
    assert isinstance(trainer.args, TGRLConfig)
