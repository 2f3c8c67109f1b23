"""tgrl.lmms_model: the lmms-eval model over the shared loader, prompt and vision-token guard."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from tgrl.utils import UserError

REPO = Path(__file__).resolve().parent.parent
TASK = "toy_task"


def test_resolve_generation_normal_form() -> None:
    from tgrl.lmms_model import resolve_generation

    greedy = resolve_generation({"max_new_tokens": 16, "temperature": 0, "top_p": 0, "until": "</s>"}, 99)
    assert greedy == {
        "max_new_tokens": 16,
        "do_sample": False,
        "temperature": 0.0,
        "top_p": 1.0,
        "until": ["</s>"],
    }
    sampled = resolve_generation({"temperature": "1.0", "top_p": 0.95}, 99)
    assert sampled["do_sample"] and sampled["temperature"] == 1.0 and sampled["top_p"] == 0.95
    assert sampled["max_new_tokens"] == 99
    assert not resolve_generation({"temperature": 0.7, "do_sample": False}, 8)["do_sample"]
    with pytest.raises(UserError):
        resolve_generation({"max_new_tokens": 0}, 8)


def test_truncate_at_stops() -> None:
    from tgrl.lmms_model import truncate_at_stops

    assert truncate_at_stops("a<|im_end|>b", ["<|im_end|>"]) == "a"
    assert truncate_at_stops("keep all", []) == "keep all"


def test_pyproject_entry_point_names_the_manifest() -> None:
    """The entry point pyproject declares is one lmms-eval 0.7.3 can load (it calls the object and wants a
    ModelManifest: the class itself fails), the installed package declares the same one, and
    ``--model tgrl`` resolves to TGRLModel through it."""
    import tomllib
    from importlib.metadata import entry_points

    from lmms_eval.models import get_model
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    from tgrl.lmms_model import TGRLModel

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]
    value = declared["lmms_eval.models"]["tgrl"]
    registry = ModelRegistryV2()
    payload = EntryPoint(name="tgrl", value=value, group="lmms_eval.models").load()
    for manifest in registry._coerce_payload_to_manifests(payload):
        registry.register_manifest(manifest)
    assert registry.get_model_class("tgrl") is TGRLModel
    installed = [e.value for e in entry_points(group="lmms_eval.models") if e.name == "tgrl"]
    assert installed == [value], f"the installed tgrl declares {installed}: reinstall it (make install)"
    assert get_model("tgrl") is TGRLModel


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    from tgrl.lmms_model import TGRLModel

    return TGRLModel(pretrained=str(tiny_checkpoint), device="cpu", batch_size=2, seed=7)


def make_requests(model, questions: list[str], gen_kwargs: dict) -> list:
    """Real lmms-eval Instances over a toy dataset registered the way simple_evaluate does it."""
    from lmms_eval.api.instance import Instance
    from PIL import Image

    docs = [{"question": q, "image": Image.new("RGB", (56, 56), (200, 30, 30))} for q in questions]
    model.task_dict[TASK] = {"test": docs}
    return [
        Instance(
            request_type="generate_until",
            arguments=(q, dict(gen_kwargs), lambda doc: [doc["image"]], i, TASK, "test"),
            idx=0,
            metadata={"task": TASK, "doc_id": i, "repeats": 1, "split": "test"},
        )
        for i, q in enumerate(questions)
    ]


def test_generate_until_greedy_is_batch_independent(model) -> None:
    """Greedy responses do not depend on the batch a request lands in, and the decoding used is
    recorded per task."""
    questions = ["How many red objects are there in the picture, counting all shapes?", "How many?", "Red?"]
    gen = {"max_new_tokens": 6, "temperature": 0, "until": []}
    out = model.generate_until(make_requests(model, questions, gen))
    assert len(out) == 3 and all(isinstance(o, str) for o in out)
    alone = [model.generate_until(make_requests(model, [q], gen))[0] for q in questions]
    assert alone == out  # questions[1] was left-padded next to questions[0] in the batch
    assert model.generation_used[TASK] == {
        "max_new_tokens": 6,
        "do_sample": False,
        "temperature": 0.0,
        "top_p": 1.0,
        "until": [],
    }


def test_generate_until_sampling_is_seeded(model) -> None:
    questions = ["How many red objects?"] * 4
    gen = {"max_new_tokens": 6, "temperature": 1.0, "do_sample": True}
    first = model.generate_until(make_requests(model, questions, gen))
    again = model.generate_until(make_requests(model, questions, gen))
    assert first == again
    assert model.generation_used[TASK]["do_sample"]


def test_settings_record_prompt_and_pixels(tiny_checkpoint) -> None:
    from tgrl.lmms_model import TGRLModel
    from tgrl.prompts import system_prompt

    lm = TGRLModel(pretrained=str(tiny_checkpoint), device="cpu", min_pixels=3136, max_pixels=12544)
    settings = lm.settings()
    assert settings["min_pixels"] == 3136 and settings["max_pixels"] == 12544
    assert settings["system_prompt"] == system_prompt()
    assert len(settings["prompt_template_sha256"]) == 64 and settings["vision_tokens_suppressed"]
    assert settings["dtype"] == "float32" and settings["backend"] == "hf"


def test_bad_arguments_are_user_errors(tiny_checkpoint) -> None:
    from tgrl.lmms_model import TGRLModel

    with pytest.raises(UserError, match="backend"):
        TGRLModel(pretrained=str(tiny_checkpoint), backend="tensorrt")
    with pytest.raises(UserError, match="batch_size"):
        TGRLModel(pretrained=str(tiny_checkpoint), batch_size=0)
    with pytest.raises(UserError, match=r"(?i)vllm|GPU"):  # no vLLM / GPU on the CPU machines
        TGRLModel(pretrained=str(tiny_checkpoint), backend="vllm")
    with pytest.raises(UserError, match="not found"):
        TGRLModel(pretrained=str(tiny_checkpoint / "nope"))


def test_an_over_long_prompt_is_an_item_error_and_the_batch_goes_on(tiny_checkpoint, model) -> None:
    """With max_model_len, a prompt that leaves no room for one generated token (what vLLM refuses, with
    the whole batch) is not generated: it gets an empty response and an item-level error with the
    training side's token count, and its batch-mates get the responses they get without the limit."""
    from tgrl.lmms_model import TGRLModel
    from tgrl.modeling import prompt_length

    short, long_question = "How many red objects?", "Count the red objects again, carefully. " * 60
    n_short, _ = prompt_length(model.processor, short, None, [(56, 56)])
    n_long, per_image = prompt_length(model.processor, long_question, None, [(56, 56)])
    limit = n_short + 20
    assert n_long >= limit
    lm = TGRLModel(pretrained=str(tiny_checkpoint), device="cpu", batch_size=3, seed=7, max_model_len=limit)
    gen = {"max_new_tokens": 6, "temperature": 0, "until": []}
    out = lm.generate_until(make_requests(lm, [short, long_question, short + " "], gen))
    assert out[1] == "" and out[0] and out[2]
    assert lm.pop_item_errors(TASK) == {
        1: f"prompt too long: {n_long} tokens (1 image(s): {per_image[0]} image tokens) leave no room to "
        f"generate within max_model_len {limit}; not generated, scored as an empty response. Fix: lower "
        "max_pixels or raise max_model_len"
    }
    unlimited = model.generate_until(make_requests(model, [short, short + " "], gen))
    assert [out[0], out[2]] == unlimited
    fits = lm.generate_until(make_requests(lm, [short], gen))  # exactly one token to spare would also fit
    assert fits == unlimited[:1] and lm.pop_item_errors(TASK) == {}


def vision_inputs(lm, questions: list[str]) -> list:
    """The pixel_values the vision tower receives while ``lm`` answers ``questions`` (greedy)."""
    seen = []

    def capture(module, args, kwargs):
        seen.append((args[0] if args else next(iter(kwargs.values()))).detach().clone())

    handle = lm.model.model.visual.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        lm.generate_until(make_requests(lm, questions, {"max_new_tokens": 3, "temperature": 0}))
    finally:
        handle.remove()
    return seen


def test_blind_model_receives_an_all_black_image_of_the_same_size(tiny_checkpoint) -> None:
    """--blind: the pixels that reach the vision tower are those of an all-black image (the processor's
    normalisation of 0 in every channel), with as many patches as the sighted run (same pixel budget)."""
    import torch

    from tgrl.lmms_model import TGRLModel

    questions = ["How many red objects?", "Red or blue?"]
    sighted = TGRLModel(pretrained=str(tiny_checkpoint), device="cpu", batch_size=2)
    blind = TGRLModel(pretrained=str(tiny_checkpoint), device="cpu", batch_size=2, blind=True)
    seen_sighted, seen_blind = vision_inputs(sighted, questions), vision_inputs(blind, questions)
    assert seen_blind and len(seen_blind) == len(seen_sighted)
    processor = blind.processor.image_processor
    black = -torch.tensor(processor.image_mean) / torch.tensor(processor.image_std)  # (0 - mean) / std
    for with_image, without in zip(seen_sighted, seen_blind, strict=True):
        assert without.shape == with_image.shape
        per_channel = without.reshape(without.shape[0], 3, -1)
        assert torch.allclose(per_channel, black.view(1, 3, 1).expand_as(per_channel), atol=1e-5)
        assert not torch.allclose(with_image, without)  # the sighted run saw the red image
    assert blind.settings()["blind"] and "blind" not in sighted.settings()
