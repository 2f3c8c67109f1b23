"""The lmms-eval model for every checkpoint of this repo (tiny or 7B), with the training loader and prompt.

Why our own model class instead of lmms-eval's ``qwen2_5_vl``: that class brings its own system prompt,
pixel defaults and a fixed bf16 dtype, so a score would measure the harness as much as the policy. This
class loads the checkpoint with :func:`tgrl.modeling.load_model_and_processor` and builds every prompt
with :func:`tgrl.prompts.build_messages` (the training template), and it suppresses the vision special
tokens in generation, exactly as rollouts do.

Reachable two ways:

* Python API (what ``eval/run_lmms_eval.py`` does): ``simple_evaluate(model=TGRLModel(pretrained=...))``.
* lmms-eval's own CLI, ``python -m lmms_eval --model tgrl --model_args pretrained=PATH,batch_size=8
  --include_path eval/tasks --tasks ...``, through the ``lmms_eval.models`` entry point. lmms-eval 0.7.3
  calls an entry point's object and expects a ``ModelManifest`` back, so the entry point must name
  :func:`lmms_eval_manifest`, not the class (naming the class makes lmms-eval call ``TGRLModel()``).

The model is "simple" in lmms-eval's sense: a task's ``doc_to_text`` gives the user text (question plus
options, see ``eval/tasks/tgrl/utils.py``) and ``doc_to_visual`` the images; the system turn and the
image placeholders come from the project template. Generation settings come from each request
(lmms-eval passes the task's ``generation_kwargs``, overridden by the runner's ``gen_kwargs``): a
temperature of 0 means greedy decoding. What was actually used per task is kept in
:attr:`TGRLModel.generation_used` and written into the results by the runner.

Backends: ``hf`` (transformers ``generate``, CPU or GPU, batched; several processes under ``accelerate
launch`` split the documents: data parallel) and ``vllm`` (GPU only, imported lazily, tensor parallel
inside one process).

Blind control (``blind``, both backends): every image is replaced by an all-black image of the same size
(:func:`tgrl.perturb.perturb_image`, mode ``full_mask``) before it reaches the processor, so the prompt, the
image placeholders and the pixel budget are those of the sighted run and only the visual content is gone.
Accuracy with the image minus accuracy blind is MMStar's multimodal gain (arXiv 2403.20330; the runner
writes it).

Visual dependency (``visual_dependency``, hf backend only): after each generated batch, the same batch of
prompts and responses goes through one clean and one perturbed-image teacher-forced pass
(:func:`tgrl.grounding.score_texts`: tgrl.probe, tgrl.perturb, the trainer's s_t). Per response the token
s_t and its reasoning / answer summary are kept in :attr:`TGRLModel.grounding` (task -> doc_id -> one
record per response, in response order) for the runner to score and log. The vllm backend refuses it:
vLLM returns no log-probs of a given text under a changed image, and loading a second copy of a 7B model
in transformers next to the engine would not fit beside it; evaluate with ``--backend hf`` instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from lmms_eval.api.model import lmms

from tgrl.prompts import TEMPLATE_PATH, build_messages, system_prompt
from tgrl.utils import UserError

BACKENDS = ("hf", "vllm")


def lmms_eval_manifest():
    """The payload of our ``lmms_eval.models`` entry point: model id ``tgrl`` -> :class:`TGRLModel`."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="tgrl", simple_class_path="tgrl.lmms_model.TGRLModel")


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def resolve_generation(gen_kwargs: dict[str, Any], default_max_new_tokens: int) -> dict[str, Any]:
    """The decoding one request asks for, in one normal form (also what gets recorded).

    lmms-eval task files use ``temperature: 0`` (sometimes with ``top_p: 0``) for greedy decoding;
    sampling happens only with a positive temperature and ``do_sample`` not set to false.

    Example:
        >>> resolve_generation({"max_new_tokens": 64, "temperature": 0}, 1024)["do_sample"]
        False
        >>> resolve_generation({"temperature": 1.0}, 1024)["max_new_tokens"]
        1024
    """
    gen_kwargs = dict(gen_kwargs or {})
    temperature = float(gen_kwargs.get("temperature") or 0.0)
    do_sample = temperature > 0 and str(gen_kwargs.get("do_sample", True)).lower() not in ("false", "0")
    top_p = float(gen_kwargs.get("top_p") or 1.0)
    until = gen_kwargs.get("until") or []
    if isinstance(until, str):
        until = [until]
    requested = gen_kwargs.get("max_new_tokens")
    max_new_tokens = int(requested if requested not in (None, "") else default_max_new_tokens)
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    return {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "temperature": temperature if do_sample else 0.0,
        "top_p": top_p if do_sample else 1.0,
        "until": [u for u in until if isinstance(u, str) and u],
    }


def truncate_at_stops(text: str, until: list[str]) -> str:
    """Cut a response at the first stop string (the lmms-eval ``until`` convention)."""
    for stop in until:
        if stop in text:
            text = text.split(stop, 1)[0]
    return text


def _grounding_spec(value: bool | str | dict | None):
    """None (off) or the :class:`tgrl.grounding.GroundingSpec` a constructor argument asks for; lmms-eval's
    CLI passes ``visual_dependency=true`` as a string."""
    if value in (None, False, "", "false", "False", "0", "none", "None"):
        return None
    from tgrl.grounding import GroundingSpec

    if isinstance(value, dict):
        return GroundingSpec.from_settings(value)
    if value in (True, "true", "True", "1"):
        return GroundingSpec()
    raise UserError(f"visual_dependency={value!r}: use true or false")


class TGRLModel(lmms):
    """lmms-eval model over :mod:`tgrl.modeling` (see the module docstring).

    Args:
        pretrained: checkpoint folder or hub id.
        backend: ``hf`` or ``vllm``.
        dtype: ``auto`` (the checkpoint's), ``float32``, ``bfloat16`` or ``float16``.
        device: ``cpu``, ``cuda`` or ``cuda:N``; default CUDA when available. Under ``accelerate
            launch`` each process takes ``cuda:<local rank>``.
        batch_size: prompts per ``generate`` call (hf); prompts per ``LLM.generate`` call (vllm).
        min_pixels, max_pixels: image resizing bounds of the processor (score-moving, recorded).
        max_new_tokens: used only when a request does not say (the runner always says).
        seed: sampling seed; batch ``b`` of a task uses ``seed + b`` (hf) and request ``i`` of a task
            ``seed + i`` (vllm), so reruns with the same settings reproduce.
        max_model_len: the context a prompt must fit (vLLM: the engine's limit, its model's when None; hf:
            only when given). A prompt that leaves no room for one generated token is not sent: it gets an
            empty response and an item-level error (:attr:`item_errors`), and the batch goes on.
        tensor_parallel_size, gpu_memory_utilization, max_images_per_prompt: vLLM only.
        max_batch_size: accepted because lmms-eval passes it; unused.
        visual_dependency: score s_t of every response (hf only; see the module docstring): True or
            ``"true"`` for the defaults of :class:`tgrl.grounding.GroundingSpec`, or its settings dict.
        blind: blank every image (same size, all black) before it reaches the model: the blind control.
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        backend: str = "hf",
        dtype: str = "auto",
        device: str | None = None,
        batch_size: int | str = 1,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        attn_implementation: str | None = None,
        max_new_tokens: int = 1024,
        seed: int = 1234,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        max_images_per_prompt: int = 8,
        max_batch_size: int | None = None,
        visual_dependency: bool | str | dict | None = None,
        blind: bool | str = False,
    ) -> None:
        super().__init__()
        self.blind = str(blind).lower() in ("true", "1")
        if backend not in BACKENDS:
            raise UserError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
        self.pretrained = str(pretrained)
        self.backend = backend
        self.batch_size_per_gpu = int(batch_size)
        if self.batch_size_per_gpu < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        self.default_max_new_tokens = int(max_new_tokens)
        self.seed = int(seed)
        self.min_pixels = int(min_pixels) if min_pixels not in (None, "", "None") else None
        self.max_pixels = int(max_pixels) if max_pixels not in (None, "", "None") else None
        self.attn_implementation = attn_implementation or None
        self.tensor_parallel_size = int(tensor_parallel_size)
        self.max_images_per_prompt = int(max_images_per_prompt)
        self.generation_used: dict[str, dict[str, Any]] = {}
        self._task_batches: dict[str, int] = {}
        self.grounding_spec = _grounding_spec(visual_dependency)
        if self.grounding_spec is not None and backend != "hf":
            raise UserError(
                "visual dependency needs the hf backend: vLLM cannot score a given response under a "
                "perturbed image. Fix: evaluate with --backend hf (batched, on GPU for 7B)"
            )
        self.grounding: dict[str, dict[int, list[dict[str, Any]]]] = {}
        self.grounding_seconds: dict[str, float] = {}
        # task -> doc_id -> why the document got no generation (the runner records it per item)
        self.item_errors: dict[str, dict[int, str]] = {}
        self.max_model_len = int(max_model_len) if max_model_len not in (None, "", "None") else None
        self._prompt_budget = None

        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size > 1:
            if backend == "vllm":
                raise UserError(
                    "the vllm backend runs in one process (tensor parallel inside it); do not start it "
                    "with accelerate launch. Fix: use --tensor-parallel-size, or shard checkpoints over GPUs"
                )
            import torch
            from accelerate import Accelerator

            on_cpu = str(device) == "cpu" or not torch.cuda.is_available()
            # cpu=True makes accelerate set up a gloo process group (torchrun on CPU, for tests)
            self.accelerator = Accelerator(cpu=on_cpu)
            self._rank = self.accelerator.process_index
            self._world_size = self.accelerator.num_processes
            device = "cpu" if on_cpu else f"cuda:{self.accelerator.local_process_index}"
        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device_name = str(device)

        if backend == "hf":
            from tgrl.modeling import load_model_and_processor

            self.model, self.processor = load_model_and_processor(
                self.pretrained,
                dtype=dtype,
                device=self.device_name,
                attn_implementation=self.attn_implementation,
                min_pixels=self.min_pixels,
                max_pixels=self.max_pixels,
            )
            self.dtype_name = str(self.model.dtype).replace("torch.", "")
        else:
            self._init_vllm(dtype, float(gpu_memory_utilization), self.max_model_len)
            self.max_model_len = int(self.llm.model_config.max_model_len)  # the engine's, also when None
        if self.max_model_len is not None:
            from tgrl.modeling import PromptBudget

            self._prompt_budget = PromptBudget(self.processor, self.max_model_len)

    # ----------------------------------------------------------------------------------------------
    # set-up

    def clean(self) -> None:
        """Keep the model loaded. lmms-eval's ``evaluate`` calls ``clean()`` after every task, and the base
        class deletes every ``nn.Module`` attribute, so the second task of a run (one load serves all tasks,
        tgrl.evaluation.runner) failed with "no attribute 'model'". The runner drops the model at the end."""
        import gc

        gc.collect()

    def _init_vllm(self, dtype: str, gpu_memory_utilization: float, max_model_len: int | None) -> None:
        from tgrl.modeling import load_processor, vision_token_ids
        from tgrl.teachers.vllm_backend import check_vllm_available, engine_kwargs

        check_vllm_available()
        from vllm import LLM

        self.processor = load_processor(self.pretrained, self.min_pixels, self.max_pixels)
        self.suppress_ids = vision_token_ids(self.processor.tokenizer)
        self.llm = LLM(
            **engine_kwargs(
                self.pretrained,
                tensor_parallel_size=self.tensor_parallel_size,
                max_model_len=max_model_len,
                max_images_per_prompt=self.max_images_per_prompt,
                gpu_memory_utilization=gpu_memory_utilization,
                dtype=dtype,
                seed=self.seed,
                min_pixels=self.min_pixels,
                max_pixels=self.max_pixels,
            )
        )
        self.dtype_name = dtype
        self.device_name = f"cuda x{self.tensor_parallel_size} (vllm)"

    @property
    def device(self):
        """lmms-eval's evaluator puts its cross-process counters on ``lm.device``."""
        import torch

        return torch.device("cuda" if self.backend == "vllm" else self.device_name)

    def settings(self) -> dict[str, Any]:
        """Every model-side setting that can move a score (the runner writes it into the results)."""
        image_processor = self.processor.image_processor
        # transformers 5 keeps the pixel bounds as size.shortest_edge / size.longest_edge
        size = getattr(image_processor, "size", None)

        def pixels(attr: str, edge: str) -> int | None:
            value = getattr(image_processor, attr, None)
            if value is None and size is not None:
                value = size.get(edge) if isinstance(size, dict) else getattr(size, edge, None)
            return value

        chat_template = getattr(self.processor, "chat_template", None) or ""
        out = {
            "backend": self.backend,
            "checkpoint": self.pretrained,
            "dtype": self.dtype_name,
            "device": self.device_name,
            "batch_size": self.batch_size_per_gpu,
            "world_size": self.world_size,
            "min_pixels": pixels("min_pixels", "shortest_edge"),
            "max_pixels": pixels("max_pixels", "longest_edge"),
            "attn_implementation": self.attn_implementation,
            "seed": self.seed,
            "prompt_template": str(TEMPLATE_PATH.name),
            "prompt_template_sha256": _sha256_text(Path(TEMPLATE_PATH).read_text(encoding="utf-8")),
            "system_prompt": system_prompt(),
            "chat_template_sha256": _sha256_text(chat_template),
            "vision_tokens_suppressed": True,
        }
        if self.backend == "vllm":
            out["tensor_parallel_size"] = self.tensor_parallel_size
        if self.grounding_spec is not None:
            out["visual_dependency"] = self.grounding_spec.settings()
        if self.blind:
            out["blind"] = "every image replaced by an all-black image of its size (tgrl.perturb full_mask)"
        return out

    # ----------------------------------------------------------------------------------------------
    # lmms-eval interface

    def loglikelihood(self, requests):
        raise NotImplementedError("TGRLModel generates only: use generate_until tasks (all of eval/tasks)")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("TGRLModel does not support multi-round tasks")

    def generate_until(self, requests) -> list[str]:
        """One response per request, in request order.

        Requests are grouped by (task, split, generation settings) so a batch never mixes decodings,
        and kept in document order inside a group (batch composition is then the same on every rerun).
        """
        from tqdm import tqdm

        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            _, gen_kwargs, _, _, task, split = request.args
            key = (task, split, json.dumps(gen_kwargs or {}, sort_keys=True, default=str))
            groups.setdefault(key, []).append(i)
        responses: list[str | None] = [None] * len(requests)
        self._task_batches = {}  # seeds depend only on the position inside this call
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="tgrl generate")
        for (task, split, _), indices in groups.items():
            gen = resolve_generation(requests[indices[0]].args[1], self.default_max_new_tokens)
            self.generation_used[task] = gen
            for start in range(0, len(indices), self.batch_size_per_gpu):
                chunk = indices[start : start + self.batch_size_per_gpu]
                contexts, visuals = [], []
                for i in chunk:
                    context, _, doc_to_visual, doc_id, _, _ = requests[i].args
                    doc = self.task_dict[task][split][doc_id]
                    contexts.append(context)
                    visuals.append(self.visuals_of(doc_to_visual(doc) or []))
                errors = self._over_long(contexts, visuals)
                keep = [p for p in range(len(chunk)) if p not in errors]
                texts = self._generate(
                    task, [contexts[p] for p in keep], [visuals[p] for p in keep], gen, positions=keep
                )
                for p, text in zip(keep, texts, strict=True):
                    responses[chunk[p]] = truncate_at_stops(text, gen["until"])
                for p, message in errors.items():  # not generated: an empty response and an item error
                    responses[chunk[p]] = ""
                    doc_id = int(requests[chunk[p]].args[3])
                    self.item_errors.setdefault(task, {})[doc_id] = message
                if self.grounding_spec is not None:
                    self._score_grounding(
                        task, [requests[i] for i in chunk], contexts, visuals, responses, chunk
                    )
                progress.update(len(chunk))
        progress.close()
        return [r if r is not None else "" for r in responses]

    def visuals_of(self, images: list) -> list:
        """The RGB images of one request as the model receives them: blanked in the blind control."""
        images = [v.convert("RGB") for v in images]
        if self.blind:
            from tgrl.perturb import perturb_image

            images = [perturb_image(v, "full_mask") for v in images]
        return images

    def _score_grounding(
        self,
        task: str,
        chunk_requests: list,
        contexts: list[str],
        visuals: list[list],
        responses: list[str | None],
        chunk: list[int],
    ) -> None:
        """s_t of one generated batch (tgrl.grounding), kept per document in response order. A request
        repeated k times (avg@k) is k consecutive entries; lmms-eval's rank-padding copies are skipped.
        Row (doc_id, j)'s perturbed image is drawn from (seed, doc_id, j): independent of batching."""
        from tgrl.grounding import score_texts

        started = time.perf_counter()
        per_doc = self.grounding.setdefault(task, {})
        keep, keys = [], []
        for pos, request in enumerate(chunk_requests):
            if (getattr(request, "metadata", None) or {}).get("__padding_only__"):
                continue
            doc_id = int(request.args[3])
            keep.append(pos)
            keys.append((doc_id, len(per_doc.get(doc_id, [])) + sum(1 for k in keys if k[0] == doc_id)))
        if keep:
            records = score_texts(
                self.model,
                self.processor,
                [contexts[p] for p in keep],
                [visuals[p] for p in keep],
                [responses[chunk[p]] or "" for p in keep],
                self.grounding_spec,
                self.seed,
                row_keys=keys,
                batch_size=self.batch_size_per_gpu,
            )
            for (doc_id, _), record in zip(keys, records, strict=True):
                per_doc.setdefault(doc_id, []).append(record)
        self.grounding_seconds[task] = self.grounding_seconds.get(task, 0.0) + time.perf_counter() - started

    def _over_long(self, contexts: list[str], visuals: list[list]) -> dict[int, str]:
        """Position -> error for the prompts that do not fit max_model_len with one token to spare (vLLM
        refuses those, failing the whole batch): training's count (tgrl.modeling.PromptBudget)."""
        if self._prompt_budget is None:
            return {}
        errors = {}
        for p, (context, images) in enumerate(zip(contexts, visuals, strict=True)):
            over = self._prompt_budget.overflow(context, None, images, reserve=1)
            if over is not None:
                n_prompt, per_image = over
                errors[p] = (
                    f"prompt too long: {n_prompt} tokens ({len(per_image)} image(s): "
                    f"{'+'.join(map(str, per_image))} image tokens) leave no room to generate within "
                    f"max_model_len {self.max_model_len}; not generated, scored as an empty response. Fix: "
                    "lower max_pixels or raise max_model_len"
                )
        return errors

    def pop_item_errors(self, task: str) -> dict[int, str]:
        """The item-level errors of ``task`` (doc_id -> message), removed from the model."""
        return self.item_errors.pop(task, {})

    def pop_grounding(self, task: str) -> tuple[dict[int, list[dict[str, Any]]], float]:
        """The grounding records of ``task`` (doc_id -> one record per response) and the seconds spent on
        them, removed from the model (the runner takes them once per task)."""
        return self.grounding.pop(task, {}), self.grounding_seconds.pop(task, 0.0)

    def _generate(
        self, task: str, contexts: list[str], visuals: list[list], gen: dict, positions: list[int]
    ) -> list[str]:
        """Responses of a batch's prompts; ``positions``: their places in the batch (the vLLM seeds)."""
        batch_index = self._task_batches.get(task, 0)
        self._task_batches[task] = batch_index + 1
        if not contexts:
            return []
        if self.backend == "hf":
            from tgrl.modeling import generate_texts

            outputs = generate_texts(
                self.model,
                self.processor,
                contexts,
                visuals,
                max_new_tokens=gen["max_new_tokens"],
                do_sample=gen["do_sample"],
                temperature=gen["temperature"] or 1.0,
                top_p=gen["top_p"],
                seed=self.seed + batch_index if gen["do_sample"] else None,
            )
            return [o[0] for o in outputs]
        first = batch_index * self.batch_size_per_gpu
        return self._generate_vllm(contexts, visuals, gen, seeds=[self.seed + first + p for p in positions])

    def _generate_vllm(
        self, contexts: list[str], visuals: list[list], gen: dict, seeds: list[int]
    ) -> list[str]:
        from vllm import SamplingParams

        from tgrl.teachers.vllm_backend import SUPPRESS_BIAS

        prompts, params = [], []
        for i, (context, images) in enumerate(zip(contexts, visuals, strict=True)):
            if len(images) > self.max_images_per_prompt:
                raise UserError(
                    f"a prompt has {len(images)} images; raise max_images_per_prompt "
                    f"(now {self.max_images_per_prompt})"
                )
            text = self.processor.apply_chat_template(
                build_messages(context, None, n_images=len(images)),
                add_generation_prompt=True,
                tokenize=False,
            )
            prompt: dict[str, Any] = {"prompt": text}
            if images:
                prompt["multi_modal_data"] = {"image": images}
            prompts.append(prompt)
            params.append(
                SamplingParams(
                    n=1,
                    temperature=gen["temperature"],
                    top_p=gen["top_p"],
                    max_tokens=gen["max_new_tokens"],
                    seed=seeds[i],
                    logit_bias={int(t): SUPPRESS_BIAS for t in self.suppress_ids},
                    skip_special_tokens=True,
                )
            )
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [o.outputs[0].text for o in outputs]
