"""What TGRLTrainer hands vLLM: one image placeholder per image in colocate mode (vLLM expands it), the
expanded ids in server mode, and a check of vLLM's prompt against the trainer's that names the cause.

The prompts come from TRL's own ``GRPOTrainer._tokenize_prompts`` with the tiny checkpoint's processor.
vLLM cannot run here; :class:`ColocatedVLLM` applies the prompt update of vLLM 0.30's Qwen2-VL processor
(each image's first placeholder token becomes that image's N feature tokens). tests_vllm/ checks that
contract against vLLM's real processor in its own environment (make vllm_test)."""

from __future__ import annotations

import pytest

from tests.helpers import picture, trl_prompt
from tgrl.modeling import load_processor
from tgrl.pixels import DEFAULT_BUDGET, PixelBudget, fit_image, image_tokens
from tgrl.trl_compat import check_vllm_prompt_lengths, collapse_image_runs, route_vllm_prompts

# Qwen2.5-VL-7B-Instruct's own preprocessor bounds: what vLLM's processor resizes with.
CHECKPOINT_DEFAULT = (3136, 12_845_056)


class ColocatedVLLM:
    """TRL's ``VLLMGeneration`` in colocate mode, with vLLM's prompt update in place of the engine:
    the i-th image-pad token of the prompt becomes ``tokens[i]`` pads (vLLM does not check whether the
    prompt was already expanded). Records the ids it was sent."""

    mode = "colocate"

    def __init__(self, image_pad: int, tokens: list[int]):
        self.image_pad, self.tokens, self.sent = image_pad, tokens, []

    def generate(self, prompts, images, num_generations, profiler=None):
        self.sent.append([list(ids) for ids in prompts])
        returned = []
        for ids in prompts:
            out, seen = [], 0
            for token in ids:
                if token == self.image_pad and seen < len(self.tokens):
                    out += [self.image_pad] * self.tokens[seen]
                    seen += 1
                else:
                    out.append(token)
            returned.append(out)
        return returned, [[7]] * len(prompts), None, None


@pytest.fixture(scope="module")
def processor(tiny_checkpoint):
    return load_processor(tiny_checkpoint)


@pytest.fixture(scope="module")
def pad(processor) -> int:
    return processor.image_token_id


def runs_of(ids: list[int], token: int) -> list[int]:
    """Lengths of the runs of ``token`` in ``ids``."""
    runs, length = [], 0
    for t in [*ids, None]:
        if t == token:
            length += 1
        elif length:
            runs.append(length)
            length = 0
    return runs


@pytest.mark.parametrize("n_images", [1, 3])
def test_colocated_vllm_gets_one_placeholder_per_image(processor, pad, n_images):
    images = [picture(56, 56, seed) for seed in range(n_images)]
    ids, trl_images = trl_prompt(processor, images)
    per_image = runs_of(ids, pad)
    assert len(per_image) == n_images and all(n > 1 for n in per_image)  # TRL's ids are expanded
    vllm = ColocatedVLLM(pad, per_image)
    route_vllm_prompts(vllm, pad)
    prompt_ids, completions, _, _ = vllm.generate(prompts=[ids], images=trl_images, num_generations=1)
    (sent,) = vllm.sent[0]
    assert runs_of(sent, pad) == [1] * n_images
    assert [t for t in sent if t != pad] == [t for t in ids if t != pad]
    assert prompt_ids == [ids] and completions == [[7]]


@pytest.mark.parametrize("n_images", [1, 3])
def test_expanded_ids_get_expanded_twice_and_the_check_names_it(processor, pad, n_images):
    images = [picture(56, 56, seed) for seed in range(n_images)]
    ids, trl_images = trl_prompt(processor, images)
    vllm = ColocatedVLLM(pad, runs_of(ids, pad))  # TRL 1.16 without the collapse
    returned, *_ = vllm.generate(prompts=[ids], images=trl_images, num_generations=1)
    assert len(returned[0]) == len(ids) + sum(n - 1 for n in runs_of(ids, pad))
    with pytest.raises(RuntimeError, match=r"already expanded \(TRL issue #6294\)"):
        check_vllm_prompt_lengths([ids], returned, pad)


def test_server_mode_keeps_the_expanded_ids(processor, pad):
    """TRL renders the images on the server and places their features on the expanded runs."""
    ids, trl_images = trl_prompt(processor, [picture(56, 56, 0)])
    vllm = ColocatedVLLM(pad, [])
    vllm.mode = "server"
    route_vllm_prompts(vllm, pad)
    assert vllm.generate(prompts=[ids], images=trl_images, num_generations=1)[0] == [ids]
    assert vllm.sent[0] == [ids]


def test_other_pixel_bounds_get_their_own_message(tiny_checkpoint, pad):
    """An image outside the trainer's budget: vLLM's processor (the checkpoint's wider bounds) counts
    another number of image tokens than the trainer's."""
    ours = load_processor(tiny_checkpoint, DEFAULT_BUDGET.min_pixels, DEFAULT_BUDGET.max_pixels)
    raw = picture(2000, 1500, 0)
    ids, trl_images = trl_prompt(ours, [fit_image(raw, DEFAULT_BUDGET)])
    agreeing = ColocatedVLLM(pad, runs_of(ids, pad))
    route_vllm_prompts(agreeing, pad)
    assert agreeing.generate(prompts=[ids], images=trl_images, num_generations=1)[0] == [ids]
    n_vllm = image_tokens(raw.width, raw.height, PixelBudget(*CHECKPOINT_DEFAULT))
    assert n_vllm != runs_of(ids, pad)[0]
    disagreeing = ColocatedVLLM(pad, [n_vllm])
    route_vllm_prompts(disagreeing, pad)
    with pytest.raises(RuntimeError, match="vLLM resized an image with other pixel bounds"):
        disagreeing.generate(prompts=[ids], images=[[raw]], num_generations=1)


def test_the_check_passes_equal_prompts_and_names_text_differences(pad):
    check_vllm_prompt_lengths([[1, pad, pad, 2], [3]], [[1, pad, pad, 2], [3]], pad)
    check_vllm_prompt_lengths([[1]], None, pad)
    with pytest.raises(RuntimeError, match="returned 1 prompts for 2 sent"):
        check_vllm_prompt_lengths([[1], [2]], [[1]], pad)
    with pytest.raises(RuntimeError, match="other text tokens"):
        check_vllm_prompt_lengths([[1, pad, 2]], [[1, pad, 2, 2]], pad)


def test_collapse_keeps_everything_but_repeated_placeholders(pad):
    assert collapse_image_runs([5, pad, pad, pad, 6, pad, pad, 7, pad], pad) == [5, pad, 6, pad, 7, pad]
    assert collapse_image_runs([5, pad, 6], pad) == [5, pad, 6]  # already unexpanded: unchanged
    assert collapse_image_runs([5, 5, 6], None) == [5, 5, 6]  # a text-only model
