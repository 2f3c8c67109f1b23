"""The image-placeholder contract against vLLM's real multimodal processor (vLLM 0.30.0, its pinned torch):
the prompt vLLM builds from what TGRLTrainer hands it equals the prompt the trainer's forward and loss use.

vLLM's ``LLM.generate`` turns each ``{"prompt_token_ids", "multi_modal_data"}`` prompt into the engine's
prompt with ``processor.apply(ProcessorInputs(ids, parse_mm_data(data)))`` (vllm/renderers/base.py,
``_process_multimodal``). The engine itself needs a GPU; this test puts that processor call in place of
``llm.generate`` inside TRL's real ``VLLMGeneration.generate`` (colocate mode), so everything from TRL's
tokenization to the prompt vLLM would generate from is the libraries' own code. Runs in the environment
``make vllm_test`` builds (requirements-vllm.txt), not in the CPU .venv."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
from trl.generation.vllm_generation import VLLMGeneration
from vllm.config import ModelConfig
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.processing.context import TimingContext
from vllm.multimodal.processing.inputs import ProcessorInputs

from tests.helpers import picture, trl_prompt
from tgrl.modeling import load_processor
from tgrl.pixels import DEFAULT_BUDGET, fit_image
from tgrl.tiny import build_tiny_checkpoint
from tgrl.trl_compat import check_vllm_prompt_lengths, route_vllm_prompts

# Qwen2.5-VL-7B-Instruct's own preprocessor bounds, which vLLM's processor resizes with (TRL builds the
# colocated engine with LLM(model=...) and no processor kwargs).
QWEN25_VL_7B_BOUNDS = {"shortest_edge": 3136, "longest_edge": 12_845_056}
RAW_SIZES = [(2000, 1500), (517, 301), (1400, 700)]  # (width, height) of the 7B-budget images


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """tiny: the tiny checkpoint (its own 56 x 56 budget on both sides). 7b: the same weights with
    Qwen2.5-VL-7B-Instruct's preprocessor bounds (vLLM's side); the trainer loads it at the 7B recipes'
    budget (tgrl.pixels.DEFAULT_BUDGET)."""
    root = tmp_path_factory.mktemp("ckpt")
    tiny = root / "tiny"
    build_tiny_checkpoint(tiny, "S", seed=0)
    seven_b = root / "7b"
    shutil.copytree(tiny, seven_b)
    config_path = seven_b / "processor_config.json"
    config = json.loads(config_path.read_text())
    config["image_processor"]["size"] = QWEN25_VL_7B_BOUNDS
    config_path.write_text(json.dumps(config))
    return {"tiny": tiny, "7b": seven_b}


def trainer_side(checkpoint, budget: str, n_images: int):
    """(processor, prompt ids, images) as TGRLTrainer's TRL hands them to VLLMGeneration.generate."""
    if budget == "tiny":
        processor = load_processor(checkpoint)
        images = [picture(56, 56, seed) for seed in range(n_images)]
    else:
        processor = load_processor(checkpoint, DEFAULT_BUDGET.min_pixels, DEFAULT_BUDGET.max_pixels)
        images = [fit_image(picture(*RAW_SIZES[seed], seed), DEFAULT_BUDGET) for seed in range(n_images)]
    ids, trl_images = trl_prompt(processor, images)
    return processor, ids, trl_images


class ProcessorEngine:
    """``vllm.LLM`` up to the engine: each prompt through vLLM's multimodal processor; the 'completion'
    is one token, since generating needs a GPU."""

    def __init__(self, checkpoint):
        self.processor = MULTIMODAL_REGISTRY.create_processor(ModelConfig(model=str(checkpoint)))

    def generate(self, prompts, sampling_params=None, use_tqdm=False):
        outputs = []
        for prompt in prompts:
            data = self.processor.info.parse_mm_data(prompt["multi_modal_data"])
            engine_prompt = self.processor.apply(
                ProcessorInputs(list(prompt["prompt_token_ids"]), data), TimingContext(enabled=False)
            )
            completion = SimpleNamespace(token_ids=[0], logprobs=None)
            outputs.append(
                SimpleNamespace(prompt_token_ids=engine_prompt["prompt_token_ids"], outputs=[completion])
            )
        return outputs


def colocated_generation(checkpoint) -> VLLMGeneration:
    """TRL's VLLMGeneration in colocate mode (one process, no sleep mode) around :class:`ProcessorEngine`."""
    generation = VLLMGeneration.__new__(VLLMGeneration)
    generation.__dict__.update(
        mode="colocate",
        accelerator=SimpleNamespace(process_index=0),
        model=None,
        llm=ProcessorEngine(checkpoint),
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        min_p=None,
        repetition_penalty=1.0,
        max_completion_length=8,
        logprobs=0,
        generation_kwargs={},
        structured_outputs_regex=None,
        tensor_parallel_size=1,
        enable_sleep_mode=False,
        _llm_weights_sleeping=False,
    )
    return generation


@pytest.mark.parametrize("n_images", [1, 3])
@pytest.mark.parametrize("budget", ["tiny", "7b"])
def test_vllm_prompt_equals_the_trainers(checkpoints, budget, n_images):
    processor, ids, images = trainer_side(checkpoints[budget], budget, n_images)
    pad = processor.image_token_id
    assert ids.count(pad) > n_images  # TRL hands over processor-expanded ids
    generation = colocated_generation(checkpoints[budget])
    route_vllm_prompts(generation, pad)
    prompt_ids, completion_ids, _, _ = generation.generate(prompts=[ids], images=images, num_generations=1)
    assert prompt_ids == [ids]
    assert completion_ids == [[0]]


@pytest.mark.parametrize("n_images", [1, 3])
@pytest.mark.parametrize("budget", ["tiny", "7b"])
def test_without_the_collapse_vllm_expands_twice(checkpoints, budget, n_images):
    """TRL 1.16 as shipped: the expanded ids go to vLLM, which expands the placeholders again."""
    processor, ids, images = trainer_side(checkpoints[budget], budget, n_images)
    pad = processor.image_token_id
    generation = colocated_generation(checkpoints[budget])
    prompt_ids, *_ = generation.generate(prompts=[ids], images=images, num_generations=1)
    assert len(prompt_ids[0]) > len(ids)
    with pytest.raises(RuntimeError, match=r"already expanded \(TRL issue #6294\)"):
        check_vllm_prompt_lengths([ids], prompt_ids, pad)
