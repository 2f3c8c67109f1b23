"""Teacher registry and backends: oracle (noise knobs, never reads the answer, seeded), hf on the tiny
checkpoint, and the vLLM backend's pure argument builders + its error without vLLM/GPU."""

from __future__ import annotations

import dataclasses
import random

import pytest

from tgrl.data import load_problems
from tgrl.prompts import THINK_CLOSE
from tgrl.rewards import follows_format, score_completion
from tgrl.synthetic import generate_split
from tgrl.teachers import (
    TEACHER_BACKENDS,
    SampleSettings,
    TeacherInput,
    TeacherJob,
    backend_option_names,
    make_teacher,
    sample_seed,
)
from tgrl.teachers.oracle import fact_accuracy
from tgrl.utils import UserError


def jobs_for(problems, k: int) -> list[TeacherJob]:
    return [TeacherJob(TeacherInput.from_problem(p), tuple(range(k))) for p in problems]


def generate(teacher, jobs) -> dict[tuple[str, int], str]:
    out = {}
    for batch in teacher.generate(jobs):
        for s in batch:
            assert (s.id, s.sample_idx) not in out
            out[(s.id, s.sample_idx)] = s.text
    return out


@pytest.fixture(scope="module")
def scenes():
    """600 synthetic problems (records with meta, no images needed by the oracle)."""
    from tgrl.data import Problem

    return [Problem(**{**r, "image_paths": []}) for r, _ in generate_split("train", 600, seed=11)]


# --- registry ---------------------------------------------------------------------------------------


def test_registry_names_and_errors():
    assert set(TEACHER_BACKENDS) == {"oracle", "hf", "vllm", "openai"}
    assert "wrong_fact_rate" in backend_option_names("oracle")
    assert {"base_url", "api_key_env", "max_concurrency"} <= set(backend_option_names("openai"))
    with pytest.raises(UserError, match="unknown teacher backend"):
        make_teacher("gpt-magic", SampleSettings())
    with pytest.raises(UserError, match="base_url"):
        make_teacher("oracle", SampleSettings(), {"base_url": "http://x"})
    with pytest.raises(UserError, match="wrong_fact_rate"):
        make_teacher("oracle", SampleSettings(), {"wrong_fact_rate": 1.5})
    with pytest.raises(UserError, match="top_p"):
        SampleSettings(top_p=0)


def test_teacher_input_has_no_answer(scenes):
    item = TeacherInput.from_problem(scenes[0])
    assert not any("answer" in f.name for f in dataclasses.fields(item))


# --- oracle -----------------------------------------------------------------------------------------


def test_oracle_noise_zero_is_correct(scenes):
    teacher = make_teacher("oracle", SampleSettings(seed=0))
    texts = generate(teacher, jobs_for(scenes, 2))
    by_id = {p.id: p for p in scenes}
    correct = [
        score_completion(t, by_id[pid].answer, None, by_id[pid].answer_type) for (pid, _), t in texts.items()
    ]
    assert sum(correct) / len(correct) >= 0.99
    assert all(follows_format(t) for t in texts.values())
    assert all(fact_accuracy(t, by_id[pid].meta) == 1.0 for (pid, _), t in texts.items())


def test_oracle_wrong_fact_rate_is_close_to_requested(scenes):
    rate = 0.3
    teacher = make_teacher("oracle", SampleSettings(seed=1), {"wrong_fact_rate": rate})
    texts = generate(teacher, jobs_for(scenes, 4))  # 2400 samples
    by_id = {p.id: p for p in scenes}
    wrong_facts = [1 - fact_accuracy(t, by_id[pid].meta) for (pid, _), t in texts.items()]
    wrong_answers = [
        1 - score_completion(t, by_id[pid].answer, None, by_id[pid].answer_type)
        for (pid, _), t in texts.items()
    ]
    share = sum(wrong_facts) / len(wrong_facts)
    assert abs(share - rate) < 0.04, share
    # a wrong count flips every sum/diff answer and some comparisons: fewer wrong answers than facts
    answer_share = sum(wrong_answers) / len(wrong_answers)
    assert 0.5 * rate < answer_share <= share + 1e-9


def test_oracle_long_rate_makes_long_traces(scenes):
    teacher = make_teacher("oracle", SampleSettings(seed=2), {"long_rate": 0.5, "long_repeats": 10})
    texts = list(generate(teacher, jobs_for(scenes[:200], 1)).values())
    long = [t for t in texts if len(t.split(THINK_CLOSE)[0]) > 60]
    assert 0.35 < len(long) / len(texts) < 0.65


def test_oracle_never_reads_the_answer(synthetic_dir):
    problems = load_problems(synthetic_dir / "train.jsonl", check_images=False)
    corrupted = [dataclasses.replace(p, answer="999", answer_type="number") for p in problems]
    teacher = make_teacher("oracle", SampleSettings(seed=5), {"wrong_fact_rate": 0.2})
    assert generate(teacher, jobs_for(problems, 3)) == generate(teacher, jobs_for(corrupted, 3))


def test_oracle_is_seeded_per_sample_independent_of_order(scenes):
    teacher = make_teacher("oracle", SampleSettings(seed=9), {"wrong_fact_rate": 0.5})
    forward = generate(teacher, jobs_for(scenes[:50], 4))
    shuffled = scenes[:50]
    random.Random(0).shuffle(shuffled)
    # a resumed/sharded run asks for subsets in another order: identical text per (id, sample)
    partial = [TeacherJob(TeacherInput.from_problem(p), (3, 1)) for p in shuffled]
    again = generate(teacher, partial)
    assert all(forward[key] == text for key, text in again.items())
    other_seed = generate(
        make_teacher("oracle", SampleSettings(seed=10), {"wrong_fact_rate": 0.5}), jobs_for(scenes[:50], 4)
    )
    assert other_seed != forward
    assert sample_seed(0, "a", 0) != sample_seed(0, "a", 1) != sample_seed(1, "a", 0)


def test_oracle_rejects_non_synthetic_problems(scenes):
    item = dataclasses.replace(TeacherInput.from_problem(scenes[0]), meta={})
    teacher = make_teacher("oracle", SampleSettings())
    with pytest.raises(UserError, match="synthetic"):
        generate(teacher, [TeacherJob(item, (0,))])


# --- hf ---------------------------------------------------------------------------------------------


def test_hf_backend_on_tiny_checkpoint(tiny_checkpoint, synthetic_dir):
    problems = load_problems(synthetic_dir / "train.jsonl", limit=3)
    teacher = make_teacher(
        "hf",
        SampleSettings(temperature=1.0, max_tokens=12, seed=0),
        {"model": str(tiny_checkpoint), "batch_size": 2},
    )
    jobs = jobs_for(problems[:2], 2) + [TeacherJob(TeacherInput.from_problem(problems[2]), (1,))]
    samples = [s for batch in teacher.generate(jobs) for s in batch]
    assert sorted((s.id, s.sample_idx) for s in samples) == sorted(
        [(p.id, i) for p in problems[:2] for i in range(2)] + [(problems[2].id, 1)]
    )
    assert all(isinstance(s.text, str) and s.n_tokens is not None for s in samples)
    assert all(s.finish_reason in ("stop", "length") for s in samples)
    assert teacher.name == str(tiny_checkpoint) and teacher.describe()["backend"] == "hf"
    vision = {"<|image_pad|>", "<|vision_start|>", "<|vision_end|>"}
    assert not any(v in s.text for s in samples for v in vision)
    with pytest.raises(UserError, match="--model"):
        make_teacher("hf", SampleSettings())


# --- vllm -------------------------------------------------------------------------------------------


# vLLM cannot be installed on these CPU machines, so its signatures are written down here as its sources
# state them: ``vllm.LLM(model, ...)`` passes its keywords to ``EngineArgs`` (vllm/entrypoints/llm.py,
# vllm/engine/arg_utils.py), and ``SamplingParams`` (vllm/sampling_params.py) is a struct of these fields.
# Only the arguments we pass are listed, with the types the sources give. Where vLLM is installed (the GPU
# environment) the test also checks the names against the real classes and builds a SamplingParams.
VLLM_ENGINE_ARGS = {
    "model": str,
    "tensor_parallel_size": int,
    "dtype": str,  # "auto" | "float16" | "bfloat16" | "float32"
    "seed": int,
    "gpu_memory_utilization": float,  # a fraction of GPU memory, in (0, 1]
    "enforce_eager": bool,
    "max_model_len": int,
    "max_num_seqs": int,
    "limit_mm_per_prompt": dict,  # modality ("image", "video", "audio") -> most items per prompt
    "mm_processor_kwargs": dict,  # keyword arguments of the Hugging Face processor call
}
VLLM_SAMPLING_PARAMS = {
    "n": int,
    "temperature": float,
    "top_p": float,  # in (0, 1]
    "max_tokens": int,
    "seed": int,
    "logit_bias": dict,  # token id (int) -> bias (float), OpenAI's range [-100, 100]
    "skip_special_tokens": bool,
}


def check_against(kwargs: dict, documented: dict, vllm_names: set[str] | None) -> None:
    """Every keyword is one the callee takes, with the type it documents (an int is no bool)."""
    for name, value in kwargs.items():
        assert name in documented, f"vLLM takes no argument {name!r}"
        expected = documented[name]
        assert isinstance(value, expected) and not (expected is not bool and isinstance(value, bool)), (
            name,
            value,
        )
    if vllm_names is not None:
        assert set(kwargs) <= vllm_names


def test_vllm_engine_and_sampling_kwargs_match_vllms_signatures():
    import dataclasses

    from transformers import Qwen2VLImageProcessor

    from tgrl.pixels import PixelBudget, budget_of
    from tgrl.teachers.vllm_backend import engine_kwargs, sampling_kwargs

    try:
        import vllm
    except ImportError:
        vllm = None
    engine_names = {f.name for f in dataclasses.fields(vllm.EngineArgs)} if vllm else None
    sampling_names = set(vllm.SamplingParams.__struct_fields__) if vllm else None

    kw = engine_kwargs(
        "Qwen/Qwen2.5-VL-72B-Instruct",
        tensor_parallel_size=8,
        max_model_len=8192,
        max_images_per_prompt=2,
        seed=3,
        min_pixels=262144,
        max_pixels=1003520,
        max_num_seqs=64,
    )
    check_against(kw, VLLM_ENGINE_ARGS, engine_names)
    assert kw["tensor_parallel_size"] == 8 and kw["max_model_len"] == 8192
    assert kw["seed"] == 3 and kw["max_num_seqs"] == 64
    # the size= form (processor-call min_pixels/max_pixels are removed in transformers 5.23)
    assert kw["mm_processor_kwargs"] == {"size": {"shortest_edge": 262144, "longest_edge": 1003520}}
    assert kw["model"] == "Qwen/Qwen2.5-VL-72B-Instruct" and 0 < kw["gpu_memory_utilization"] <= 1
    assert kw["dtype"] in ("auto", "float16", "bfloat16", "float32")
    assert kw["limit_mm_per_prompt"] == {"image": 2}  # the one modality, as many images as a problem has
    # vLLM hands mm_processor_kwargs to the Hugging Face processor: the image processor of Qwen2.5-VL
    # takes them and resizes into exactly the budget that was asked for
    processor = Qwen2VLImageProcessor(**kw["mm_processor_kwargs"])
    assert budget_of(processor) == PixelBudget(262144, 1003520)
    assert "max_model_len" not in engine_kwargs("m") and "mm_processor_kwargs" not in engine_kwargs("m")
    check_against(engine_kwargs("m"), VLLM_ENGINE_ARGS, engine_names)
    with pytest.raises(UserError):
        engine_kwargs("m", tensor_parallel_size=0)
    with pytest.raises(UserError, match="both min_pixels and max_pixels"):
        engine_kwargs("m", max_pixels=1003520)

    suppressed = [151655, 151652]
    s = sampling_kwargs(
        SampleSettings(temperature=0.8, top_p=0.95, max_tokens=2048),
        n=4,
        seed=11,
        suppress_token_ids=suppressed,
    )
    check_against(s, VLLM_SAMPLING_PARAMS, sampling_names)
    assert (s["n"], s["temperature"], s["top_p"], s["max_tokens"], s["seed"]) == (4, 0.8, 0.95, 2048, 11)
    # the vision tokens are pushed down as far as the documented range allows, and nothing else is touched
    assert set(s["logit_bias"]) == set(suppressed)
    assert all(isinstance(t, int) and -100 <= b < 0 for t, b in s["logit_bias"].items())
    assert min(s["logit_bias"].values()) == -100
    if vllm is not None:
        vllm.SamplingParams(**s)
    with pytest.raises(ValueError):
        sampling_kwargs(SampleSettings(), n=0, seed=0, suppress_token_ids=[])


def test_vllm_missing_gives_install_hint():
    try:
        import vllm  # noqa: F401

        pytest.skip("vLLM is installed here")
    except ImportError:
        pass
    with pytest.raises(UserError) as err:
        make_teacher("vllm", SampleSettings(), {"model": "Qwen/Qwen2.5-VL-72B-Instruct"})
    message = str(err.value)
    assert "vLLM" in message and "GPU" in message and "--backend openai" in message
