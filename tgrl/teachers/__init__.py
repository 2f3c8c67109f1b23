"""Expert-trajectory teachers (docs/design.md#51-teachers): one interface, four backends selected by name.

    teacher = make_teacher("oracle", SampleSettings(seed=0), {"wrong_fact_rate": 0.2})
    for samples in teacher.generate(jobs): ...

Backends (``oracle``, ``hf``, ``vllm``, ``openai``) are imported lazily by name, so that
``import tgrl.teachers`` pulls in neither torch, vLLM nor an HTTP client.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from tgrl.teachers.base import (
    SampleSettings,
    Teacher,
    TeacherInput,
    TeacherJob,
    TeacherSample,
    sample_seed,
    stable_int,
)
from tgrl.utils import UserError

TEACHER_BACKENDS: dict[str, str] = {
    "oracle": "tgrl.teachers.oracle:OracleTeacher",
    "hf": "tgrl.teachers.hf:HFTeacher",
    "vllm": "tgrl.teachers.vllm_backend:VLLMTeacher",
    "openai": "tgrl.teachers.openai_backend:OpenAITeacher",
}

__all__ = [
    "TEACHER_BACKENDS",
    "SampleSettings",
    "Teacher",
    "TeacherInput",
    "TeacherJob",
    "TeacherSample",
    "backend_option_names",
    "get_teacher_class",
    "make_teacher",
    "sample_seed",
    "stable_int",
]


def get_teacher_class(backend: str) -> type[Teacher]:
    if backend not in TEACHER_BACKENDS:
        raise UserError(f"unknown teacher backend {backend!r}; choose one of {sorted(TEACHER_BACKENDS)}")
    module_name, class_name = TEACHER_BACKENDS[backend].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def backend_option_names(backend: str) -> list[str]:
    """The options a backend accepts (fields of its ``Options`` dataclass)."""
    return [f.name for f in dataclasses.fields(get_teacher_class(backend).Options)]


def make_teacher(backend: str, settings: SampleSettings, options: dict[str, Any] | None = None) -> Teacher:
    """Build a teacher; an option the backend does not take is an error naming it (no silent no-op)."""
    cls = get_teacher_class(backend)
    options = {k: v for k, v in (options or {}).items() if v is not None}
    valid = {f.name for f in dataclasses.fields(cls.Options)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise UserError(
            f"option(s) {unknown} do not apply to teacher backend {backend!r}; it takes {sorted(valid)}"
        )
    return cls(settings, cls.Options(**options))
