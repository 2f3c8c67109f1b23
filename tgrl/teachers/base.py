"""The teacher interface shared by every backend (oracle, hf, vllm, openai).

Why a common interface: the trajectory builder must be able to resume, shard and score any teacher the
same way, so a backend only turns *jobs* (a problem the teacher may see + the sample indices still
missing) into *samples* (text per (id, sample_idx)), and the builder does the bookkeeping.

The teacher never sees the gold answer: :class:`TeacherInput` is built from a problem without its
``answer`` field (docs/design.md#51-teachers). Only the oracle reads ``meta`` (the scene ground truth, i.e.
what a perfect eye would see in the image); model backends get the image and the prompt of
:func:`tgrl.prompts.build_messages` only.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tgrl.data import Problem
from tgrl.prompts import build_messages
from tgrl.utils import UserError, load_yaml_mapping


@dataclass(frozen=True)
class TeacherInput:
    """Everything a teacher may look at for one problem: image(s), question, options. No answer."""

    id: str
    question: str
    image_paths: tuple[str, ...]
    choices: tuple[str, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_problem(cls, problem: Problem) -> TeacherInput:
        return cls(
            id=problem.id,
            question=problem.question,
            image_paths=tuple(problem.image_paths),
            choices=tuple(problem.choices) if problem.choices else None,
            meta=dict(problem.meta),
        )

    def messages(self) -> list[dict]:
        """The project prompt (system + user turn with image placeholders), as the policy sees it."""
        return build_messages(
            self.question, list(self.choices) if self.choices else None, len(self.image_paths)
        )

    def load_images(self) -> list:
        from tgrl.data import load_image

        return [load_image(p) for p in self.image_paths]


@dataclass(frozen=True)
class SampleSettings:
    """Sampling settings that determine the trajectories (they go into every record's ``gen``)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise UserError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise UserError(f"max_tokens must be >= 1, got {self.max_tokens}")


@dataclass(frozen=True)
class TeacherJob:
    """One problem and the sample indices still to generate for it (all K on a fresh run)."""

    input: TeacherInput
    sample_indices: tuple[int, ...]


@dataclass
class TeacherSample:
    """One generated trajectory, or a failure (``text is None`` and ``error`` says why).

    ``n_tokens`` is the teacher's own completion length when the backend knows it; ``finish_reason``
    is ``"stop"`` or ``"length"`` (a truncated output: filter F2 rejects it) when known.
    ``skipped``: the failure is a property of the problem under these settings (its prompt does not fit the
    model's context, too many images), not of the moment: the builder records it in the manifest with
    ``error`` as the reason and does not retry it, so one bad problem costs one problem, never the run.
    """

    id: str
    sample_idx: int
    text: str | None
    seed: int | None = None
    n_tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None
    skipped: bool = False


def stable_int(*parts: Any, bits: int = 31) -> int:
    """A process-independent integer hash (Python's ``hash`` is salted per process)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % (1 << bits)


def sample_seed(seed: int, problem_id: str, sample_idx: int) -> int:
    """The seed of one (problem, sample): the same whatever the shard, batch or resume point."""
    return stable_int("tgrl-teacher", seed, problem_id, sample_idx)


class Teacher(ABC):
    """A trajectory source. Subclasses set ``backend``, an ``Options`` dataclass and ``generate``.

    ``name`` is the teacher's model id, written into every record's ``teacher`` field.
    """

    backend: ClassVar[str] = ""

    @dataclass
    class Options:
        pass

    def __init__(self, settings: SampleSettings, options: Any | None = None):
        self.settings = settings
        self.options = options if options is not None else self.Options()

    @property
    @abstractmethod
    def name(self) -> str: ...

    @abstractmethod
    def generate(self, jobs: Sequence[TeacherJob]) -> Iterator[list[TeacherSample]]:
        """Yield samples in groups as they finish (any order); every requested (id, sample_idx)
        appears exactly once, as text or as a failure."""

    def describe(self) -> dict[str, Any]:
        """What the manifest records about this teacher (never a secret)."""
        return {"backend": self.backend, "name": self.name, "options": dataclasses.asdict(self.options)}

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op for stateless backends
        """Release models, pools and connections."""


# --------------------------------------------------------------------------------------------------
# Command-line + YAML config handling shared by the data_prep scripts
# --------------------------------------------------------------------------------------------------


def parse_args_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None):
    """Parse ``argv`` where ``--config file.yaml`` supplies defaults and explicit flags override them.

    Config keys are the flags' names (``max_tokens`` or ``max-tokens``); an unknown key is an error
    naming the key, so a typo never silently falls back to a default.
    """
    if not any(a.dest == "config" for a in parser._actions):
        parser.add_argument("--config", type=Path, default=None, help="YAML file with defaults for any flag")
    pre, _ = parser.parse_known_args(argv)
    if pre.config is not None:
        path = Path(pre.config)
        config = load_yaml_mapping(path, "config file")
        dests = {a.dest for a in parser._actions if a.dest not in ("help", "config")}
        normalised = {}
        for key, value in config.items():
            dest = str(key).replace("-", "_")
            if dest not in dests:
                raise UserError(
                    f"{path}: unknown config key '{key}'. Fix: use one of {sorted(dests)} (the flag names)"
                )
            normalised[dest] = value
        parser.set_defaults(**normalised)
    args = parser.parse_args(argv)
    missing = [
        a.option_strings[0]
        for a in parser._actions
        if getattr(a, "_tgrl_required", False) and getattr(args, a.dest) is None
    ]
    if missing:
        raise UserError(f"missing required option(s) {missing} (give them as flags or config keys)")
    return args


def required(action: argparse.Action) -> argparse.Action:
    """Mark a flag as required after config merging (argparse's own ``required`` ignores configs)."""
    action._tgrl_required = True  # type: ignore[attr-defined]
    return action
