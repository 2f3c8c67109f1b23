"""eval/probe_expert_tokens.py: the expert fact-token probe, at T = 1 (the tables) and at a rollout
temperature (rows of their own, so the tables never mix the two)."""

from __future__ import annotations

import importlib
import json

import pytest


def _rows(summary):
    return [json.loads(line) for line in summary.read_text().splitlines()]


def test_probe_rows_at_a_temperature_are_their_own(tiny_checkpoint, synthetic_dir, tmp_path, capsys):
    probe = importlib.import_module("eval.probe_expert_tokens")
    summary = tmp_path / "summary.jsonl"
    common = ["--model", str(tiny_checkpoint), "--jsonl", str(synthetic_dir / "test.jsonl"), "--limit", "6"]
    common += ["--summary", str(summary), "--run", "r", "--method", "base"]
    probe.main(common)
    probe.main([*common, "--temperature", "0.3"])
    probe.main([*common, "--temperature", "0.3"])  # idempotent: the same key adds nothing
    rows = _rows(summary)
    by_decoding = {}
    for row in rows:
        by_decoding.setdefault(row["decoding"], {})[row["metric"]] = row
    assert set(by_decoding) == {"teacher_forced", "teacher_forced_t0.3"}
    assert len(rows) == 2 * len(by_decoding["teacher_forced"])
    plain, hot = (
        by_decoding["teacher_forced"]["expert_fact_p"],
        by_decoding["teacher_forced_t0.3"]["expert_fact_p"],
    )
    assert (
        plain["key"] != hot["key"] and plain["value"] != hot["value"]
    )  # random init: p near 1 / vocab either way
    assert "nothing to do" in capsys.readouterr().out


def test_probe_refuses_a_non_positive_temperature(tiny_checkpoint, synthetic_dir, tmp_path, capsys):
    probe = importlib.import_module("eval.probe_expert_tokens")
    args = ["--model", str(tiny_checkpoint), "--jsonl", str(synthetic_dir / "test.jsonl")]
    args += ["--summary", str(tmp_path / "s.jsonl"), "--run", "r", "--method", "base", "--temperature", "0"]
    with pytest.raises(SystemExit):
        probe.main(args)
    assert "--temperature 0.0: must be > 0" in capsys.readouterr().err


def test_fact_dependency_is_s_t_at_the_fact_tokens_at_the_given_temperature(
    tiny_checkpoint, synthetic_dir, tmp_path
):
    """expert_fact_s is the mean s_t over the oracle text's fact tokens, from a clean and a perturbed pass
    at logits / T (recomputed here from the two log-prob passes of tgrl.probe); its rows have their own
    key, the p rows stay those of a plain probe, and a rerun adds nothing."""
    import torch

    from tgrl.data import load_problems
    from tgrl.grounding import GroundingSpec
    from tgrl.modeling import load_model_and_processor
    from tgrl.probe import Perturbation, completion_logps, fact_token_positions
    from tgrl.teachers.oracle import oracle_trace
    from tgrl.token_weights import visual_dependency

    probe = importlib.import_module("eval.probe_expert_tokens")
    summary = tmp_path / "summary.jsonl"
    common = ["--model", str(tiny_checkpoint), "--jsonl", str(synthetic_dir / "test.jsonl"), "--limit", "5"]
    common += ["--summary", str(summary), "--run", "r", "--method", "base", "--temperature", "0.3"]
    probe.main(common)
    plain = {r["metric"]: r["value"] for r in _rows(summary)}
    probe.main([*common, "--fact-dependency", "--perturb-seed", "7"])
    probe.main([*common, "--fact-dependency", "--perturb-seed", "7"])
    rows = _rows(summary)
    assert len(rows) == len(plain) + 2
    got = {r["metric"]: r for r in rows}
    assert got["expert_fact_s"]["decoding"] == "teacher_forced_t0.3" and got["expert_fact_s"]["unit"] == "s_t"

    problems = load_problems(synthetic_dir / "test.jsonl", limit=5)
    model, processor = load_model_and_processor(tiny_checkpoint)
    texts = [oracle_trace(p.meta) for p in problems]
    args = ([p.question for p in problems], [p.load_images() for p in problems], texts)
    spec = GroundingSpec()
    clean = completion_logps(model, processor, *args, temperature=0.3)
    perturbed = completion_logps(
        model,
        processor,
        *args,
        temperature=0.3,
        perturbation=Perturbation(spec.perturb_mode, spec.perturb_prob, 7),
    )
    values = []
    for text, a, b in zip(texts, clean, perturbed, strict=True):
        _, s = visual_dependency(a.unsqueeze(0), b.unsqueeze(0), torch.ones(1, a.numel(), dtype=torch.bool))
        values += [s[0, j].item() for j in fact_token_positions(processor.tokenizer, text)]
    assert got["expert_fact_s"]["n"] == len(values) > 0
    assert got["expert_fact_s"]["value"] == pytest.approx(sum(values) / len(values), rel=1e-5)
    share = sum(v >= spec.threshold for v in values) / len(values)
    assert got["expert_fact_s_share"]["value"] == pytest.approx(share)
    # at T = 1 the same text gives another s_t: the temperature reaches both passes
    probe.main([*common[:-2], "--fact-dependency", "--perturb-seed", "7"])
    at_one = [
        r for r in _rows(summary) if r["metric"] == "expert_fact_s" and r["decoding"] == "teacher_forced"
    ]
    assert len(at_one) == 1 and at_one[0]["value"] != pytest.approx(got["expert_fact_s"]["value"])
