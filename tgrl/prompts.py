"""The single prompt template (system prompt, user turn, output format), read from ``prompt.yaml``.

Why one place: a train/eval prompt mismatch silently moves benchmark scores, so the teacher, the
trainers and the lmms-eval model all build their messages with :func:`build_messages`.
"""

from __future__ import annotations

import string
from functools import cache
from pathlib import Path

import yaml

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TEMPLATE_PATH = Path(__file__).with_name("prompt.yaml")


@cache
def load_template(path: str | None = None) -> dict[str, str]:
    """Read the prompt template file (cached); ``path`` lets a user swap in their own template."""
    with open(path or TEMPLATE_PATH, encoding="utf-8") as f:
        template = yaml.safe_load(f)
    missing = {"system", "user", "choices", "choice_line"} - set(template)
    if missing:
        raise ValueError(f"{path or TEMPLATE_PATH}: prompt template lacks keys {sorted(missing)}")
    return template


def system_prompt(template_path: str | None = None) -> str:
    return load_template(template_path)["system"].strip()


def choice_letter(index: int) -> str:
    """A, B, C, ... for the index-th multiple-choice option."""
    return string.ascii_uppercase[index]


def build_user_text(question: str, choices: list[str] | None = None, template_path: str | None = None) -> str:
    """The user turn's text: the question, then lettered options when there are any."""
    template = load_template(template_path)
    text = template["user"].format(question=question.strip())
    if choices:
        options = "\n".join(
            template["choice_line"].format(letter=choice_letter(i), text=c) for i, c in enumerate(choices)
        )
        text += template["choices"].format(options=options)
    return text


def build_messages(
    question: str,
    choices: list[str] | None = None,
    n_images: int = 1,
    template_path: str | None = None,
) -> list[dict]:
    """Chat messages in the transformers/TRL multimodal form: images first, then the question.

    Example:
        >>> msgs = build_messages("How many red objects?", n_images=1)
        >>> [m["role"] for m in msgs], msgs[1]["content"][0]
        (['system', 'user'], {'type': 'image'})
    """
    content: list[dict] = [{"type": "image"} for _ in range(n_images)]
    content.append({"type": "text", "text": build_user_text(question, choices, template_path)})
    return [
        {"role": "system", "content": [{"type": "text", "text": system_prompt(template_path)}]},
        {"role": "user", "content": content},
    ]


def format_response(think: str, answer: str) -> str:
    """A response in the project's output format: ``<think>...</think><answer>...</answer>``."""
    return f"{THINK_OPEN}{think}{THINK_CLOSE}{ANSWER_OPEN}{answer}{ANSWER_CLOSE}"
