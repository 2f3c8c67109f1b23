"""Trajectory filters F1-F4 on hand-built rows with exact expected counts; F3 log-probs equal a direct
single-example forward pass; the filter script writes a training set the loader and trainer read."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from data_prep import filter_trajectories as filter_script
from tgrl.data import load_problems
from tgrl.filters import FilterConfig, filter_trajectories
from tgrl.modeling import encode_prompts, load_model_and_processor, response_token_ids
from tgrl.probe import response_logprobs
from tgrl.utils import REPO_ROOT, UserError

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "filters"


MAX_TOKENS = 64  # the fixture's long trace (~280 tokens) exceeds it, the others (~25) fit


@pytest.fixture(scope="module")
def policy(tiny_checkpoint):
    return load_model_and_processor(tiny_checkpoint)


@pytest.fixture(scope="module")
def problems():
    return load_problems(FIXTURE / "problems.jsonl")


@pytest.fixture()
def trajectories():
    return [json.loads(line) for line in (FIXTURE / "trajectories.jsonl").read_text().splitlines()]


def run(problems, trajectories, policy, **overrides):
    model, processor = policy
    config = FilterConfig(max_completion_tokens=MAX_TOKENS, batch_size=4, **overrides)
    return filter_trajectories(problems, trajectories, config, model=model, processor=processor)


def reasons(result) -> dict:
    return {(r["id"], r["sample_idx"]): r["reject_reason"] for r in result.trajectories}


def test_all_filters_exact_counts(problems, trajectories, policy):
    result = run(problems, trajectories, policy)
    c = result.counts
    assert c["filters"]["safety"] == {
        "in": 12,
        "out": 10,
        "rejected": {"generation_failed": 1, "vision_token": 1},
    }
    assert c["filters"]["f1_correct"] == {"in": 10, "out": 9, "rejected": {"incorrect": 1}}
    assert c["filters"]["f2_format_length"] == {
        "in": 9,
        "out": 6,
        "rejected": {"bad_format": 1, "too_long": 1, "truncated": 1},
    }
    assert c["filters"]["f3_logprob"] == {"in": 6, "out": 6, "rejected": {}}
    assert "f4_visual_dependency" not in c["filters"]
    assert c["selection"] == {"by": "max_mean_logprob", "candidates": 6, "selected": 3, "not_selected": 3}
    assert c["problems"] == {
        "in": 5,
        "with_trajectories": 4,
        "without_trajectories": 1,
        "with_expert": 3,
        "without_expert": 2,
        "by_type": {"cmp": {"problems": 1, "with_expert": 1}, "diff": {"problems": 2, "with_expert": 1},
                    "sum": {"problems": 2, "with_expert": 1}},
    }  # fmt: skip
    assert c["trajectories"]["reject_reasons"] == {
        "bad_format": 1,
        "generation_failed": 1,
        "incorrect": 1,
        "not_selected": 3,
        "too_long": 1,
        "truncated": 1,
        "vision_token": 1,
    }
    r = reasons(result)
    assert r[("f-p0", 1)] == "incorrect" and r[("f-p0", 2)] == "bad_format"
    assert (r[("f-p1", 0)], r[("f-p1", 1)], r[("f-p1", 2)]) == ("too_long", "truncated", "vision_token")
    assert r[("f-p2", 0)] == "generation_failed" and r[("f-p2", 1)] is None
    assert result.selected["f-p1"] is None and result.selected["f-p3"] is None
    # three identical texts: equal log-probs, the lowest sample index wins
    assert result.selected["f-p4"]["sample_idx"] == 0 and r[("f-p4", 1)] == r[("f-p4", 2)] == "not_selected"
    p0 = [t for t in result.trajectories if t["id"] == "f-p0" and t["sample_idx"] in (0, 3)]
    best = max(p0, key=lambda t: t["mean_logprob"])
    assert result.selected["f-p0"] is best and best["kept"] is True
    assert sum(t["kept"] for t in result.trajectories) == 3
    assert c["fact_accuracy"]["kept"] == pytest.approx(1.0 if best["sample_idx"] == 0 else 2 / 3)
    # n_tokens is recomputed under the policy tokenizer, end-of-turn included
    _, processor = policy
    assert (
        best["n_tokens"] == len(processor.tokenizer(best["text"], add_special_tokens=False)["input_ids"]) + 1
    )


def test_f3_logprobs_equal_a_direct_single_example_forward(problems, policy):
    model, processor = policy
    texts = [
        "<think>red 2, blue 3, 2+3=5</think><answer>5</answer>",
        "hi",
        "<think>a much longer response with many more tokens than the others here</think><answer>3</answer>",
        "<answer>blue</answer>",
        "x",
    ]
    chosen = [problems[i % len(problems)] for i in range(len(texts))]
    chosen[3] = problems[0]
    responses = [response_token_ids(processor.tokenizer, t) for t in texts]
    questions = [p.question for p in chosen]
    images = [p.load_images() for p in chosen]
    choices = [
        ["left", "right"] if i == 1 else None for i in range(len(texts))
    ]  # prompts of different lengths
    logp, mask = response_logprobs(model, processor, questions, images, choices, responses)
    for i, ids in enumerate(responses):
        enc = encode_prompts(processor, [questions[i]], [images[i]], [choices[i]])
        n = len(ids)
        inputs = dict(enc)
        inputs["input_ids"] = torch.cat([enc["input_ids"], torch.tensor([ids])], dim=1)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        inputs["mm_token_type_ids"] = torch.cat(
            [enc["mm_token_type_ids"], torch.zeros((1, n), dtype=torch.long)], 1
        )
        with torch.no_grad():
            logits = model(**inputs).logits[0, -n - 1 : -1]
        direct = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(ids)[:, None])[:, 0]
        assert int(mask[i].sum()) == n
        assert torch.allclose(logp[i, :n], direct, atol=1e-5), (logp[i, :n] - direct).abs().max()
        assert float(logp[i, n:].abs().sum()) == 0.0  # padding contributes nothing


def test_filter_mean_logprob_matches_single_forward(problems, trajectories, policy):
    model, processor = policy
    result = run(problems, trajectories, policy)
    best = result.selected["f-p0"]
    p0 = problems[0]
    ids = response_token_ids(processor.tokenizer, best["text"])
    logp, mask = response_logprobs(model, processor, [p0.question], [p0.load_images()], [None], [ids])
    assert best["mean_logprob"] == pytest.approx(float(logp.sum() / mask.sum()), abs=1e-5)


def test_ablation_switches(problems, trajectories, policy):
    no_f1 = run(problems, trajectories, policy, f1_correct=False)
    assert "f1_correct" not in no_f1.counts["filters"]
    assert no_f1.counts["selection"]["candidates"] == 7  # the incorrect p0 trace now competes
    no_f2 = run(problems, trajectories, policy, f2_format_length=False)
    assert no_f2.counts["selection"]["candidates"] == 9
    assert no_f2.selected["f-p1"] is not None  # the long or truncated trace would now train
    # F3 off: no model needed, lowest surviving sample index selected
    _, processor = policy
    no_f3 = filter_trajectories(
        problems,
        trajectories,
        FilterConfig(max_completion_tokens=MAX_TOKENS, f3_logprob=False),
        processor=processor,
    )
    assert no_f3.counts["selection"]["by"] == "lowest_sample_idx"
    assert {k: v["sample_idx"] for k, v in no_f3.selected.items() if v} == {"f-p0": 0, "f-p2": 1, "f-p4": 0}
    assert all(t["mean_logprob"] is None for t in no_f3.trajectories)


def test_f3_threshold_and_f4(problems, trajectories, policy):
    strict = run(problems, trajectories, policy, min_mean_logprob=0.0)  # log-probs are < 0
    assert strict.counts["filters"]["f3_logprob"]["rejected"] == {"low_logprob": 6}
    assert strict.counts["problems"]["with_expert"] == 0
    f4 = run(problems, trajectories, policy, f4_visual_dependency=True, min_visual_dependency=0.0)
    assert f4.counts["filters"]["f4_visual_dependency"] == {"in": 6, "out": 6, "rejected": {}}
    assert all(t["mean_visual_dependency"] >= 0 for t in f4.trajectories if "mean_visual_dependency" in t)
    assert f4.counts["problems"]["with_expert"] == 3
    f4_strict = run(problems, trajectories, policy, f4_visual_dependency=True, min_visual_dependency=1e9)
    assert f4_strict.counts["filters"]["f4_visual_dependency"]["rejected"] == {"low_visual_dependency": 6}
    # a quantile threshold: of the 6 survivors' mean s_t, the one at rank floor(0.5 * 5) = 2
    values = sorted(t["mean_visual_dependency"] for t in f4.trajectories if "mean_visual_dependency" in t)
    half = run(problems, trajectories, policy, f4_visual_dependency=True, f4_quantile=0.5)
    assert half.counts["f4_threshold"] == values[2]
    rejected = half.counts["filters"]["f4_visual_dependency"]["rejected"].get("low_visual_dependency", 0)
    assert rejected == sum(v < values[2] for v in values) >= 1  # ties at the threshold stay


def test_f3_off_with_a_random_survivor(problems, trajectories, policy):
    """--f3-random-survivor: among the same survivors as F3 off, one drawn by a seeded hash of the problem
    id (reproducible, and not always the lowest sample index)."""
    _, processor = policy

    def pick(seed):
        config = FilterConfig(
            max_completion_tokens=MAX_TOKENS, f3_logprob=False, f3_random_survivor=True, seed=seed
        )
        result = filter_trajectories(problems, trajectories, config, processor=processor)
        return result, {k: v["sample_idx"] for k, v in result.selected.items() if v}

    lowest = FilterConfig(max_completion_tokens=MAX_TOKENS, f3_logprob=False)
    base = filter_trajectories(problems, trajectories, lowest, processor=processor)
    result, chosen = pick(0)
    assert result.counts["selection"]["by"] == "random_survivor"
    assert result.counts["selection"]["candidates"] == base.counts["selection"]["candidates"]
    assert set(chosen) == {k for k, v in base.selected.items() if v}
    survivors = {}
    for t in base.trajectories:
        if t["reject_reason"] in (None, "not_selected"):
            survivors.setdefault(t["id"], []).append(t["sample_idx"])
    assert all(chosen[k] in survivors[k] for k in chosen)
    assert pick(0)[1] == chosen  # reproducible
    draws = [pick(seed)[1] for seed in range(6)]
    assert any(d != {k: min(v) for k, v in survivors.items()} for d in draws)  # not the lowest index


def test_input_errors(problems, trajectories, policy):
    with pytest.raises(UserError, match="not in the problem file"):
        run(problems, trajectories + [{**trajectories[0], "id": "ghost"}], policy)
    with pytest.raises(UserError, match="appears twice"):
        run(problems, trajectories + [trajectories[0]], policy)
    with pytest.raises(UserError, match="policy"):
        filter_trajectories(problems, trajectories, FilterConfig())


def test_script_writes_a_training_set(tiny_checkpoint, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(FIXTURE, data)
    out = tmp_path / "elsewhere" / "train_set"
    argv = ["--data", str(data / "problems.jsonl"), "--trajectories", str(data / "trajectories.jsonl")]
    argv += ["--policy", str(tiny_checkpoint), "--out", str(out), "--max-completion-tokens", str(MAX_TOKENS)]
    manifest = filter_script.main([*argv, "--no-progress"])
    rows = load_problems(out / "train.jsonl")  # images resolve from the new folder
    assert [r.id for r in rows] == ["f-p0", "f-p1", "f-p2", "f-p3", "f-p4"]
    experts = {r.id: r.meta["expert"] for r in rows}
    assert experts["f-p1"] is None and experts["f-p3"] is None
    assert set(experts["f-p0"]) == {"text", "teacher", "sample_idx", "mean_logprob", "n_tokens"}
    assert experts["f-p2"]["text"].endswith("<answer>blue</answer>") and experts["f-p2"]["teacher"] == "hand"
    assert rows[0].meta["counts"] == {"red": 2, "blue": 3}  # the rest of meta is kept
    assert manifest["counts"]["problems"]["with_expert"] == 3
    filtered = [json.loads(line) for line in (out / "trajectories.filtered.jsonl").read_text().splitlines()]
    assert len(filtered) == 12 and sum(r["kept"] for r in filtered) == 3
    # the trainer's reader takes the expert text from these rows
    from tgrl.rl_data import expert_text

    assert expert_text(rows[0]) == experts["f-p0"]["text"] and expert_text(rows[1]) == ""
    # rerun: no-op; other settings: refused without --force
    before = (out / "manifest.json").read_bytes()
    filter_script.main([*argv, "--no-progress"])
    assert (out / "manifest.json").read_bytes() == before
    with pytest.raises(SystemExit):
        filter_script.main([*argv, "--no-progress", "--no-f1"])
    assert "--force" in capsys.readouterr().err


def test_oracle_then_filter_pipeline(synthetic_dir, tiny_checkpoint, tmp_path):
    """The data pipeline in miniature: oracle trajectories, then the filter, give a training set."""
    from data_prep import build_teacher_trajectories

    teacher_out, train_out = tmp_path / "teacher", tmp_path / "train"
    data = synthetic_dir / "train.jsonl"
    build_teacher_trajectories.main(
        ["--data", str(data), "--out", str(teacher_out), "--backend", "oracle", "--k", "4"]
        + ["--wrong-fact-rate", "0.2", "--seed", "0", "--no-progress"]
    )
    manifest = filter_script.main(
        [
            "--data",
            str(data),
            "--trajectories",
            str(teacher_out / "trajectories.jsonl"),
            "--out",
            str(train_out),
        ]
        + ["--policy", str(tiny_checkpoint), "--max-completion-tokens", "64", "--no-progress"]
    )
    c = manifest["counts"]
    assert c["trajectories"]["in"] == 240
    assert c["filters"]["f1_correct"]["rejected"]["incorrect"] == 240 - c["filters"]["f1_correct"]["out"] > 10
    assert c["problems"]["with_expert"] >= 57  # 4 tries at 20% noise: almost every problem keeps one
    assert c["fact_accuracy"]["kept"] > c["fact_accuracy"]["all_trajectories"]
    assert manifest["teacher"]["teacher"] == "oracle" and manifest["teacher"]["complete"] is True
    rows = load_problems(train_out / "train.jsonl")
    assert sum(r.meta["expert"] is not None for r in rows) == c["problems"]["with_expert"]
