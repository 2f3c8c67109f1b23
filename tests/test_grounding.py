"""Visual dependency at evaluation time (tgrl/grounding.py, tgrl/probe.py, the runner's --visual-dependency).

Hand cases for the regions and the per-task means; the teacher-forced pass on the tiny checkpoint (no
perturbation gives s_t = 0 exactly; a row's s_t does not depend on the batch it lands in); the runner end
to end with the flag (rows, samples, a key of its own) and its refusal with vllm.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tgrl.grounding import HIGH_S, GroundingSpec, regions, summarize, task_metrics, token_regions
from tgrl.utils import UserError

from .test_run_eval import read_rows, run


def test_high_s_is_the_s_t_of_a_halved_probability() -> None:
    d = -math.log(2)
    assert math.isclose(HIGH_S, math.exp(d) - d - 1)


@pytest.mark.parametrize(
    "text, reasoning, answer",
    [
        ("<think>red 3</think><answer>3</answer>", "red 3", "3"),
        ("<think>red 3, blue 4<answer>7</answer>", "red 3, blue 4", "7"),  # unclosed think: up to <answer>
        ("<think>red 3", "red 3", None),
        ("<answer>1</answer> then <answer>2</answer>", None, "2"),  # the reward reads the last block
        ("<think>a</think><answer>5", "a", "5"),  # unclosed last answer: to the end
        ("no tags", None, None),
    ],
)
def test_regions(text: str, reasoning: str | None, answer: str | None) -> None:
    got = regions(text)
    assert [text[a:b] if (a, b) != (None, None) else None for a, b in (s or (None, None) for s in got)] == [
        reasoning,
        answer,
    ]


def test_summarize_counts_tokens_by_region() -> None:
    text = "<think>ab</think><answer>c</answer>"
    # tokens: "<think>", "a", "b", "</think><answer>", "c", "</answer>", end of turn
    ends = [7, 8, 9, 25, 26, 35, 35]
    assert token_regions(text, ends) == ["", "reasoning", "reasoning", "", "answer", "", ""]
    s = [0.0, 0.5, 0.1, 9.0, 0.3, 9.0, 9.0]
    out = summarize(text, ends, s, threshold=0.2)
    assert out["reasoning"] == pytest.approx(0.3) and out["answer"] == pytest.approx(0.3)
    assert out["reasoning_share"] == 0.5 and (out["n_reasoning"], out["n_answer"]) == (2, 1)
    assert summarize("plain", [5, 5], [1.0, 1.0])["reasoning"] is None
    with pytest.raises(ValueError, match="token ends"):
        summarize(text, ends, s[:-1])


def test_task_metrics_split_by_correctness() -> None:
    items = [
        ({"reasoning": 0.4, "answer": 0.0, "reasoning_share": 1.0}, True),
        ({"reasoning": 0.2, "answer": 0.2, "reasoning_share": 0.0}, False),
        ({"reasoning": None, "answer": 0.1, "reasoning_share": None}, None),  # no <think>, unknown score
    ]
    out = task_metrics(items)
    assert out["vis_dep_reasoning"] == (pytest.approx(0.3), 2)
    assert out["vis_dep_reasoning_correct"] == (pytest.approx(0.4), 1)
    assert out["vis_dep_reasoning_incorrect"] == (pytest.approx(0.2), 1)
    assert out["vis_dep_answer"] == (pytest.approx(0.1), 3)
    assert out["vis_dep_reasoning_share"] == (pytest.approx(0.5), 2)
    assert task_metrics([]) == {}


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint):
    from tgrl.modeling import load_model_and_processor

    model, processor = load_model_and_processor(str(tiny_checkpoint), device="cpu", dtype="float32")
    return model.eval(), processor


def _problems(synthetic_dir, n: int):
    from PIL import Image

    rows = [json.loads(line) for line in (synthetic_dir / "test.jsonl").read_text().splitlines()[:n]]
    images = [[Image.open(synthetic_dir / p).convert("RGB") for p in row["images"]] for row in rows]
    texts = [f"<think>{row['question'][:12]}</think><answer>{row['answer']}</answer>" for row in rows]
    return [row["question"] for row in rows], images, texts


def test_score_texts_zero_without_perturbation_and_independent_of_batching(tiny_model, synthetic_dir) -> None:
    from tgrl.grounding import score_texts

    model, processor = tiny_model
    questions, images, texts = _problems(synthetic_dir, 3)
    none = score_texts(model, processor, questions, images, texts, GroundingSpec(perturb_prob=0.0), seed=0)
    assert all(v == 0.0 for r in none for v in r["s"])
    spec = GroundingSpec(perturb_mode="full_mask", perturb_prob=1.0)
    full = score_texts(model, processor, questions, images, texts, spec, seed=0)
    assert any(v > 0.0 for r in full for v in r["s"])  # the image moves the tokens' probabilities
    keys = [(7, i) for i in range(3)]
    one = score_texts(
        model, processor, questions, images, texts, GroundingSpec(), 0, row_keys=keys, batch_size=1
    )
    three = score_texts(model, processor, questions, images, texts, GroundingSpec(), 0, row_keys=keys)
    for a, b in zip(one, three, strict=True):
        assert a["token_ends"] == b["token_ends"] and a["s"] == pytest.approx(b["s"], abs=2e-4)
        assert a["n_reasoning"] > 0 and a["n_answer"] > 0
        assert len(a["s"]) == len(a["token_ends"])


def test_settings_key_unchanged_when_off_and_refused_with_vllm() -> None:
    from tgrl.evaluation import runner

    off = runner.resolve_settings({}, None)
    legacy = {k: v for k, v in off.items() if k != "visual_dependency"}
    assert runner.settings_hash(off) == runner.settings_hash(legacy)  # old keys stay valid
    on = runner.resolve_settings({"visual_dependency": True}, None)
    assert on["visual_dependency"]["threshold"] == pytest.approx(HIGH_S)
    assert runner.settings_hash(on) != runner.settings_hash(off)
    with pytest.raises(UserError, match="hf backend"):
        runner.resolve_settings({"visual_dependency": True, "backend": "vllm"}, None)


def test_runner_writes_grounding_rows_and_token_s(tiny_checkpoint, synthetic_dir, tmp_path) -> None:
    summary = tmp_path / "summary.jsonl"
    args = [
        "--model", str(tiny_checkpoint), "--jsonl", f"synthetic_test={synthetic_dir / 'test.jsonl'}",
        "--out", str(tmp_path / "raw"), "--summary", str(summary), "--run", "r", "--method", "base",
        "--suite", "tiny", "--limit", "4", "--max-new-tokens", "24", "--device", "cpu",
    ]  # fmt: skip
    plain = run(*args)
    assert plain.returncode == 0, plain.stderr[-3000:]
    grounded = run(*args, "--visual-dependency")
    assert grounded.returncode == 0, grounded.stderr[-3000:]
    assert "finished earlier" not in grounded.stdout  # a key of its own, not the plain run's
    rows = read_rows(summary)
    assert len({r["key"] for r in rows}) == 2
    plain_rows = [r for r in rows if not r["settings"]["visual_dependency"]]
    vd_rows = [r for r in rows if r["settings"]["visual_dependency"]]
    assert not any(r["metric"].startswith("vis_dep_") for r in plain_rows)
    acc = {r["metric"]: r["value"] for r in plain_rows}
    assert {r["metric"]: r["value"] for r in vd_rows if r["metric"] in acc} == acc  # generation untouched
    samples = read_rows(Path(vd_rows[0]["results_dir"]) / "samples.jsonl")
    assert len(samples) == 4
    pairs = []
    for sample in samples:
        (record,) = sample["grounding"]
        assert len(record["s"]) == len(record["token_ends"]) >= 1 and record["correct"] in (True, False)
        pairs.append((record, record["correct"]))
    expected = task_metrics(pairs)  # the rows are the per-task means of the samples' records
    got = {r["metric"]: (r["value"], r["n"]) for r in vd_rows if r["metric"].startswith("vis_dep_")}
    assert got.keys() == expected.keys()
    for metric, (value, n) in expected.items():
        assert got[metric][0] == pytest.approx(value) and got[metric][1] == n
