"""Image size against the context: the vLLM teacher (through a fake ``vllm`` module, as
on CPU there is none) loses one problem, never a batch or the run, and records why in the manifest; a
resume does not retry it; shards carry it through the merge; RL preflight names a row whose images plus
the rollout budget do not fit vLLM's max_model_len."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep import build_teacher_trajectories as btt
from data_prep import merge_shards
from tgrl.data import load_problems
from tgrl.modeling import load_processor, prompt_length
from tgrl.pixels import DEFAULT_BUDGET
from tgrl.rl_data import check_prompt_budget
from tgrl.utils import UserError, write_jsonl

MAX_MODEL_LEN = 2048


def write_problems(folder: Path, spec: dict[str, tuple[list[tuple[int, int]], str]]) -> Path:
    """spec: id -> ([(width, height) of each image], question)."""
    rng = np.random.default_rng(0)
    rows = []
    for pid, (sizes, question) in spec.items():
        images = []
        for n, (w, h) in enumerate(sizes):
            name = f"{pid}-{n}.png"
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
            images.append(name)
        rows.append(
            {"id": pid, "images": images, "question": question, "answer": "3", "answer_type": "number",
             "choices": None, "source": "test", "meta": {}}
        )  # fmt: skip
    write_jsonl(folder / "problems.jsonl", rows)
    return folder / "problems.jsonl"


SPEC = {
    "ok-1": ([(100, 80)], "How many?"),
    "big": ([(1000, 1000), (1000, 1000)], "Two large images: 2 x 1,275 tokens > 2,048."),
    "poison": ([(120, 90)], "POISON: vLLM rejects this prompt."),
    "ok-2": ([(300, 200)], "How many now?"),
}


class FakeClientError(Exception):
    """Stands for vllm.exceptions.VLLMClientError (not a ValueError in vLLM 0.30)."""


class FakeLLM:
    """vllm.LLM's generate contract: a request it rejects fails the whole call, as in vLLM."""

    calls: list[int] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def generate(self, prompts, params, use_tqdm=False):
        FakeLLM.calls.append(len(prompts))
        for prompt in prompts:
            if "POISON" in prompt["prompt"]:
                raise FakeClientError(
                    "The decoder prompt (length 9999) is longer than the maximum model length"
                )
        outputs = []
        for param in params:
            completion = types.SimpleNamespace(text="<think>3</think><answer>3</answer>", token_ids=[1, 2, 3],
                                               finish_reason="stop")  # fmt: skip
            outputs.append(types.SimpleNamespace(outputs=[completion] * param.n))
        return outputs


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM = FakeLLM
    module.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    exceptions = types.ModuleType("vllm.exceptions")
    exceptions.VLLMClientError = FakeClientError
    module.exceptions = exceptions
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.exceptions", exceptions)
    import tgrl.teachers.vllm_backend as backend

    monkeypatch.setattr(backend, "check_vllm_available", lambda: None)
    FakeLLM.calls = []
    return FakeLLM


def run_teacher(data: Path, out: Path, model: Path, *extra: str) -> int:
    argv = [
        "--data", str(data), "--out", str(out), "--backend", "vllm", "--model", str(model), "--k", "2",
        "--max-model-len", str(MAX_MODEL_LEN), "--min-pixels", str(DEFAULT_BUDGET.min_pixels),
        "--max-pixels", str(DEFAULT_BUDGET.max_pixels), "--no-progress", *extra,
    ]  # fmt: skip
    try:
        return btt.main(argv)
    except SystemExit as exit_:
        return int(exit_.code)


def test_one_bad_problem_costs_one_problem(fake_vllm, tiny_checkpoint, tmp_path):
    data = write_problems(tmp_path, SPEC)
    out = tmp_path / "teacher"
    assert run_teacher(data, out, tiny_checkpoint) == 0  # not EXIT_INCOMPLETE: nothing to retry
    rows = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]
    assert sorted({r["id"] for r in rows}) == ["ok-1", "ok-2"] and len(rows) == 4
    manifest = json.loads((out / "manifest.json").read_text())
    reasons = {e["id"]: e["reason"] for e in manifest["skipped"]}
    assert set(reasons) == {"big", "poison"}
    assert f">= max_model_len {MAX_MODEL_LEN}" in reasons["big"] and "--max-pixels" in reasons["big"]
    assert "vLLM rejected the prompt" in reasons["poison"] and "longer than the maximum" in reasons["poison"]
    assert manifest["complete"] and manifest["counts"]["skipped_problems"] == 2
    assert manifest["counts"]["missing"] == 0 and manifest["counts"]["failed_this_run"] == 0
    assert manifest["teacher_info"]["pixel_budget"] == DEFAULT_BUDGET.as_dict()
    # the big problem never reached vLLM; the chunk with the poison was retried one problem at a time
    assert fake_vllm.calls == [3, 1, 1, 1]

    fake_vllm.calls.clear()
    assert run_teacher(data, out, tiny_checkpoint) == 0
    assert fake_vllm.calls == []  # a resume does not retry what cannot run under these settings
    assert run_teacher(data, out, tiny_checkpoint, "--retry-skipped") == 0
    assert fake_vllm.calls == [1]  # the poison alone (the big one is caught before vLLM again)


def test_systemic_rejection_stops_the_run(fake_vllm, tiny_checkpoint, tmp_path):
    data = write_problems(tmp_path, {f"p{i}": ([(100, 80)], "POISON everywhere") for i in range(3)})
    assert run_teacher(data, tmp_path / "t", tiny_checkpoint) == 2  # a UserError: not 3 skipped problems


def test_engine_errors_are_not_skips(fake_vllm, tiny_checkpoint, tmp_path, monkeypatch):
    def broken(self, prompts, params, use_tqdm=False):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(FakeLLM, "generate", broken)
    data = write_problems(tmp_path, {"a": ([(100, 80)], "q")})
    with pytest.raises(RuntimeError, match="CUDA error"):
        run_teacher(data, tmp_path / "t", tiny_checkpoint)


def test_shards_carry_skipped_problems_through_the_merge(fake_vllm, tiny_checkpoint, tmp_path):
    data = write_problems(tmp_path, SPEC)
    out = tmp_path / "sharded"
    for index in (0, 1):
        assert run_teacher(data, out, tiny_checkpoint, "--num-shards", "2", "--shard-index", str(index)) == 0
    manifest = merge_shards.merge(out, data)
    assert {e["id"] for e in manifest["skipped"]} == {"big", "poison"}
    assert manifest["counts"]["done"] == 4 and manifest["counts"]["skipped_problems"] == 2


# --------------------------------------------------------------------------------------------------
# RL preflight


@pytest.fixture(scope="module")
def processor(tiny_checkpoint):
    return load_processor(tiny_checkpoint, DEFAULT_BUDGET.min_pixels, DEFAULT_BUDGET.max_pixels)


def test_prompt_length_counts_what_the_processor_makes(processor, tmp_path):
    data = write_problems(tmp_path, {"a": ([(1000, 700), (90, 60)], "Compare the two images.")})
    (problem,) = load_problems(data)
    images = problem.load_images()
    n, per_image = prompt_length(processor, problem.question, problem.choices, [im.size for im in images])
    from tgrl.modeling import encode_prompts

    real = encode_prompts(processor, [problem.question], [images])
    assert n == real["input_ids"].shape[1]
    assert per_image == [int(g.prod()) // 4 for g in real["image_grid_thw"]]


def test_many_images_are_a_clear_preflight_error(processor, tmp_path):
    """5 images x 1,280 tokens + 2,048 > 8,192: the row, the field and the fix are named."""
    data = write_problems(
        tmp_path, {"one": ([(1400, 700)], "fine"), "five": ([(1400, 700)] * 5, "five large images")}
    )
    problems = load_problems(data)
    with pytest.raises(UserError) as err:
        check_prompt_budget(problems, processor, 2048, 8192, str(data))
    message = str(err.value)
    assert f"{data}: row 2 (id 'five'), field 'images': 5 image(s)" in message
    assert "> vllm_max_model_length 8192" in message and "Fix: lower max_pixels" in message
    check_prompt_budget(problems[:1], processor, 2048, 8192, str(data))  # one large image fits
