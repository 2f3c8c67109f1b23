"""Teacher backend for any local transformers VLM (the tiny model on CPU, a real one on a GPU).

It reuses the project's one loader and generation path (:mod:`tgrl.modeling`): the same prompt
encoding as training and evaluation, batched ``generate`` with the vision special tokens suppressed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from tgrl.teachers.base import SampleSettings, Teacher, TeacherJob, TeacherSample, stable_int


class HFTeacher(Teacher):
    """Batched sampling with ``model.generate``; ``batch_size`` problems (x their missing samples) per call.

    Seeding is per batch (``torch.manual_seed`` of a hash of the run seed and the batch's first id),
    so a run is reproducible for a fixed batch layout; a resumed run regenerates only the missing
    samples. ``finish_reason`` is ``"length"`` when the re-tokenized text reaches ``max_tokens``
    (an approximation: decoding drops special tokens).
    """

    backend = "hf"

    @dataclass
    class Options:
        model: str | None = None
        batch_size: int = 8
        dtype: str = "auto"
        device: str = "cpu"
        min_pixels: int | None = None
        max_pixels: int | None = None

    def __init__(self, settings: SampleSettings, options: Options | None = None):
        super().__init__(settings, options)
        from tgrl.utils import UserError

        if not self.options.model:
            raise UserError("hf teacher: --model is required (a local checkpoint folder or a hub id)")
        if self.options.batch_size < 1:
            raise UserError(f"hf teacher: batch_size must be >= 1, got {self.options.batch_size}")
        from tgrl.modeling import load_model_and_processor

        self.model, self.processor = load_model_and_processor(
            self.options.model,
            dtype=self.options.dtype,
            device=self.options.device,
            min_pixels=self.options.min_pixels,
            max_pixels=self.options.max_pixels,
        )

    @property
    def name(self) -> str:
        return str(self.options.model)

    def describe(self) -> dict:
        from tgrl.pixels import budget_of

        return {**super().describe(), "pixel_budget": budget_of(self.processor.image_processor).as_dict()}

    def _batches(self, jobs: Sequence[TeacherJob]) -> Iterator[list[TeacherJob]]:
        """Group jobs with the same number of missing samples (``num_return_sequences`` is per call)."""
        by_count: dict[int, list[TeacherJob]] = defaultdict(list)
        for job in jobs:
            if job.sample_indices:
                by_count[len(job.sample_indices)].append(job)
        for group in by_count.values():
            for start in range(0, len(group), self.options.batch_size):
                yield group[start : start + self.options.batch_size]

    def generate(self, jobs: Sequence[TeacherJob]) -> Iterator[list[TeacherSample]]:
        from tgrl.modeling import generate_texts

        tokenizer = self.processor.tokenizer
        s = self.settings
        for batch in self._batches(jobs):
            n = len(batch[0].sample_indices)
            seed = stable_int("tgrl-hf-teacher", s.seed, batch[0].input.id, batch[0].sample_indices[0])
            texts = generate_texts(
                self.model,
                self.processor,
                [job.input.question for job in batch],
                [job.input.load_images() for job in batch],
                choices=[list(job.input.choices) if job.input.choices else None for job in batch],
                max_new_tokens=s.max_tokens,
                do_sample=s.temperature > 0,
                temperature=s.temperature,
                top_p=s.top_p,
                num_return_sequences=n,
                seed=seed,
            )
            out = []
            for job, job_texts in zip(batch, texts, strict=True):
                for idx, text in zip(job.sample_indices, job_texts, strict=True):
                    n_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
                    out.append(
                        TeacherSample(
                            id=job.input.id,
                            sample_idx=idx,
                            text=text,
                            seed=seed,
                            n_tokens=n_tokens,
                            finish_reason="length" if n_tokens >= s.max_tokens else "stop",
                        )
                    )
            yield out

    def close(self) -> None:
        self.model = None
