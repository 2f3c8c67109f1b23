"""Teacher backend on an offline vLLM engine (e.g. Qwen2.5-VL-72B-Instruct, tensor parallel 8).

vLLM is imported only when the teacher is built (it cannot be installed on the CPU machines,
docs/environment.md#3-vllm), and the engine and sampling arguments come from pure functions
(:func:`engine_kwargs`, :func:`sampling_kwargs`) so they are unit-tested on CPU. The teacher's own
processor formats :func:`tgrl.prompts.build_messages`; vision special tokens get a logit bias of -100
(docs/environment.md#8-generation-pitfall).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from tgrl.pixels import PixelBudget
from tgrl.teachers.base import SampleSettings, Teacher, TeacherJob, TeacherSample, sample_seed
from tgrl.utils import UserError

SUPPRESS_BIAS = -100.0

INSTALL_HINT = (
    "the vllm backend needs vLLM and a CUDA GPU. Fix: run on a GPU node with the environment of "
    "environment.yml (`bash scripts/setup_gpu_env.sh`, which installs vllm with its pinned torch), "
    "or serve the model elsewhere with `vllm serve MODEL` and use --backend openai --base-url URL"
)


def engine_kwargs(
    model: str,
    *,
    tensor_parallel_size: int = 1,
    max_model_len: int | None = None,
    max_images_per_prompt: int = 1,
    gpu_memory_utilization: float = 0.9,
    dtype: str = "auto",
    seed: int = 0,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    enforce_eager: bool = False,
    max_num_seqs: int | None = None,
) -> dict[str, Any]:
    """Arguments of ``vllm.LLM(...)``."""
    if tensor_parallel_size < 1:
        raise UserError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
    if max_images_per_prompt < 1:
        raise UserError(f"max_images_per_prompt must be >= 1, got {max_images_per_prompt}")
    kwargs: dict[str, Any] = {
        "model": model,
        "tensor_parallel_size": tensor_parallel_size,
        "limit_mm_per_prompt": {"image": max_images_per_prompt},
        "gpu_memory_utilization": gpu_memory_utilization,
        "dtype": dtype,
        "seed": seed,
        "enforce_eager": enforce_eager,
    }
    if max_model_len is not None:
        kwargs["max_model_len"] = max_model_len
    if max_num_seqs is not None:
        kwargs["max_num_seqs"] = max_num_seqs
    if (min_pixels is None) != (max_pixels is None):
        raise UserError(
            f"give both min_pixels and max_pixels or neither (got {min_pixels}, {max_pixels}): "
            "vLLM's processor takes them as one size={shortest_edge, longest_edge}. "
            "Fix: --min-pixels and --max-pixels "
            "(tgrl.pixels.DEFAULT_BUDGET: 262144 and 1003520)"
        )
    if min_pixels is not None:
        # the forward-compatible form: min_pixels/max_pixels processor-call kwargs go in transformers 5.23
        kwargs["mm_processor_kwargs"] = {"size": PixelBudget(min_pixels, max_pixels).size()}
    return kwargs


def sampling_kwargs(
    settings: SampleSettings, n: int, seed: int, suppress_token_ids: Sequence[int]
) -> dict[str, Any]:
    """Arguments of ``vllm.SamplingParams(...)`` for ``n`` samples of one prompt."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return {
        "n": n,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "max_tokens": settings.max_tokens,
        "seed": seed,
        "logit_bias": {int(t): SUPPRESS_BIAS for t in suppress_token_ids},
        "skip_special_tokens": True,
    }


def check_vllm_available() -> None:
    """Raise a :class:`UserError` saying what to install/where to run when vLLM or a GPU is missing."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise UserError(f"vLLM is not installed: {INSTALL_HINT}") from None
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is part of every install
        raise UserError(f"torch is not installed: {INSTALL_HINT}") from None
    if not torch.cuda.is_available():
        raise UserError(f"no CUDA GPU is visible: {INSTALL_HINT}")


class VLLMTeacher(Teacher):
    """One ``LLM.generate`` call per chunk of ``batch_size`` problems (vLLM batches internally);
    each problem asks for its missing samples with ``n = len(missing)`` and a seed derived from
    (run seed, id, first missing index), so a chunk's results are appended before the next starts."""

    backend = "vllm"

    @dataclass
    class Options:
        model: str | None = None
        tensor_parallel_size: int = 1
        max_model_len: int | None = None
        max_images_per_prompt: int = 1
        gpu_memory_utilization: float = 0.9
        dtype: str = "auto"
        min_pixels: int | None = None
        max_pixels: int | None = None
        enforce_eager: bool = False
        max_num_seqs: int | None = None
        batch_size: int = 256

    def __init__(self, settings: SampleSettings, options: Options | None = None):
        super().__init__(settings, options)
        o = self.options
        if not o.model:
            raise UserError("vllm teacher: --model is required (e.g. Qwen/Qwen2.5-VL-72B-Instruct)")
        check_vllm_available()
        from vllm import LLM

        from tgrl.modeling import load_processor, vision_token_ids

        self.processor = load_processor(o.model, o.min_pixels, o.max_pixels)
        self.suppress_ids = vision_token_ids(self.processor.tokenizer)
        self.llm = LLM(
            **engine_kwargs(
                o.model,
                tensor_parallel_size=o.tensor_parallel_size,
                max_model_len=o.max_model_len,
                max_images_per_prompt=o.max_images_per_prompt,
                gpu_memory_utilization=o.gpu_memory_utilization,
                dtype=o.dtype,
                seed=settings.seed,
                min_pixels=o.min_pixels,
                max_pixels=o.max_pixels,
                enforce_eager=o.enforce_eager,
                max_num_seqs=o.max_num_seqs,
            )
        )

    @property
    def name(self) -> str:
        return str(self.options.model)

    def describe(self) -> dict[str, Any]:
        from tgrl.pixels import budget_of

        return {**super().describe(), "pixel_budget": budget_of(self.processor.image_processor).as_dict()}

    def skip_reason(self, job: TeacherJob, images: list) -> str | None:
        """Why vLLM would reject this problem under these settings (None: it fits). Checked before the
        chunk goes to vLLM, where one rejected prompt fails the whole ``generate`` call."""
        from tgrl.modeling import PromptBudget

        n_images, limit = len(images), self.options.max_images_per_prompt
        if n_images > limit:
            return (
                f"{n_images} images > max_images_per_prompt {limit} "
                "(fix: --max-images-per-prompt, then --retry-skipped)"
            )
        if self.options.max_model_len is None:
            return None
        choices = list(job.input.choices) if job.input.choices else None
        if getattr(self, "_prompt_budget", None) is None:
            self._prompt_budget = PromptBudget(self.processor, self.options.max_model_len)
        over = self._prompt_budget.overflow(job.input.question, choices, images, reserve=1)
        if over is not None:  # vLLM needs room for one generated token
            n_prompt, per_image = over
            return (
                f"prompt of {n_prompt} tokens ({n_images} image(s): "
                f"{'+'.join(map(str, per_image))} image tokens) >= max_model_len "
                f"{self.options.max_model_len} (fix: lower --max-pixels or raise --max-model-len: "
                "other settings start a new run)"
            )
        return None

    def generate(self, jobs: Sequence[TeacherJob]) -> Iterator[list[TeacherSample]]:
        from vllm import SamplingParams

        jobs = [j for j in jobs if j.sample_indices]
        for start in range(0, len(jobs), self.options.batch_size):
            chunk, prompts, params, seeds, batch = [], [], [], [], []
            for job in jobs[start : start + self.options.batch_size]:
                images = job.input.load_images()
                reason = self.skip_reason(job, images)
                if reason is not None:
                    batch += skipped_samples(job, reason)
                    continue
                text = self.processor.apply_chat_template(
                    job.input.messages(), add_generation_prompt=True, tokenize=False
                )
                chunk.append(job)
                prompts.append({"prompt": text, "multi_modal_data": {"image": images}})
                seed = sample_seed(self.settings.seed, job.input.id, job.sample_indices[0])
                seeds.append(seed)
                params.append(
                    SamplingParams(
                        **sampling_kwargs(self.settings, len(job.sample_indices), seed, self.suppress_ids)
                    )
                )
            for job, seed, output in self._generate_isolating(chunk, prompts, params, seeds):
                if isinstance(output, str):
                    batch += skipped_samples(job, output)
                    continue
                for idx, completion in zip(job.sample_indices, output.outputs, strict=True):
                    batch.append(
                        TeacherSample(
                            id=job.input.id,
                            sample_idx=idx,
                            text=completion.text,
                            seed=seed,
                            n_tokens=len(completion.token_ids),
                            finish_reason=completion.finish_reason,
                        )
                    )
            yield batch

    def _generate_isolating(self, chunk, prompts, params, seeds):
        """``llm.generate`` on the chunk; when vLLM rejects a request (:func:`is_request_error`),
        retry one problem at a time so only the rejected problems are lost, each with vLLM's message. If
        every problem of a chunk of several is rejected, the cause is not the problems: raise."""
        if not chunk:
            return []
        try:
            return list(zip(chunk, seeds, self.llm.generate(prompts, params, use_tqdm=False), strict=True))
        except Exception as err:
            if not is_request_error(err):
                raise
            if len(chunk) == 1:
                return [(chunk[0], seeds[0], f"vLLM rejected the prompt: {err}")]
        results, rejected = [], 0
        for job, prompt, param, seed in zip(chunk, prompts, params, seeds, strict=True):
            try:
                (output,) = self.llm.generate([prompt], [param], use_tqdm=False)
                results.append((job, seed, output))
            except Exception as err:
                if not is_request_error(err):
                    raise
                rejected += 1
                results.append((job, seed, f"vLLM rejected the prompt: {err}"))
        if rejected == len(chunk):
            raise UserError(f"vLLM rejected every problem of a chunk of {len(chunk)}: {results[0][2]}")
        return results


def is_request_error(err: BaseException) -> bool:
    """An error about one request's input (vLLM aborts the chunk's requests and raises it): vLLM 0.30's
    ``VLLMClientError`` family (e.g. "prompt longer than the maximum model length"; not a ValueError) or a
    ValueError. Engine and CUDA errors are not: they stop the run, and a rerun resumes."""
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:  # older vLLM: validation raised ValueError
        return isinstance(err, ValueError)
    return isinstance(err, ValueError | VLLMClientError)


def skipped_samples(job: TeacherJob, reason: str) -> list[TeacherSample]:
    """The samples of a problem that cannot run under these settings (recorded, never retried)."""
    return [TeacherSample(job.input.id, idx, None, error=reason, skipped=True) for idx in job.sample_indices]
