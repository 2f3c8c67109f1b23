"""The one image-pixel budget, and the resize that makes every processor agree on image tokens.

Training, rollouts, the teacher, the filter and evaluation must see the same images and token counts, so
:data:`DEFAULT_BUDGET` is defined here once for the GPU tier, and :func:`fit_image` resizes images into it
in the data layer, before vLLM's processor could resize them with the checkpoint's own bounds (TRL issue
#6401). The numbers and who carries them: docs/design.md#83-pixel-budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tgrl.utils import UserError


@dataclass(frozen=True)
class PixelBudget:
    """Bounds on an image's area after resizing (Qwen-VL ``min_pixels`` / ``max_pixels``)."""

    min_pixels: int
    max_pixels: int

    def __post_init__(self) -> None:
        if not 1 <= self.min_pixels <= self.max_pixels:
            raise UserError(
                f"pixel budget must satisfy 1 <= min_pixels <= max_pixels, got {self.min_pixels}, "
                f"{self.max_pixels}. Fix: set both (tgrl.pixels.DEFAULT_BUDGET is 262144, 1003520)"
            )

    def size(self) -> dict[str, int]:
        """The ``size=`` form processors (transformers >= 5, vLLM ``mm_processor_kwargs``) take."""
        return {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}

    def as_dict(self) -> dict[str, int]:
        return {"min_pixels": self.min_pixels, "max_pixels": self.max_pixels}


# GPU tier (Qwen2.5-VL-7B): min 262,144 = 512 x 512 (EasyR1 / NoisyRollout / PAPO,
# docs/anchors.md#11-published-7b-recipes),
# max 1,003,520 = 1,280 image tokens x 28 x 28 (NoisyRollout's 1e6; keeps 5 images + 2,048 response tokens
# close to vllm_max_model_length 8,192).
DEFAULT_BUDGET = PixelBudget(min_pixels=262_144, max_pixels=1_003_520)


def resolve_budget(min_pixels: int | None, max_pixels: int | None, current: PixelBudget) -> PixelBudget:
    """``current`` with the bounds that are given replaced (None keeps the checkpoint's value)."""
    return PixelBudget(
        current.min_pixels if min_pixels is None else int(min_pixels),
        current.max_pixels if max_pixels is None else int(max_pixels),
    )


def budget_of(image_processor: Any) -> PixelBudget:
    """The budget a (Qwen-VL) image processor resizes into, from its ``size`` (transformers 5)."""
    size = getattr(image_processor, "size", None)

    def edge(name: str) -> int | None:
        if size is None:
            return None
        return size.get(name) if isinstance(size, dict) else getattr(size, name, None)

    lo, hi = edge("shortest_edge"), edge("longest_edge")
    if lo is None or hi is None:
        raise UserError(
            f"{type(image_processor).__name__} has no shortest_edge/longest_edge pixel bounds in its size "
            f"({size!r}); tgrl's pixel budget needs a Qwen-VL style image processor"
        )
    return PixelBudget(int(lo), int(hi))


def set_budget(processor: Any, budget: PixelBudget) -> None:
    """Make ``processor`` (its image processor, and its video processor as ``from_pretrained(size=...)``
    would) resize into ``budget``; saved with ``save_pretrained``."""
    from transformers.image_utils import SizeDict

    for name in ("image_processor", "video_processor"):
        sub = getattr(processor, name, None)
        if sub is not None and getattr(sub, "size", None) is not None:
            sub.size = SizeDict(**budget.size())


def pixel_fit_of(processor: Any) -> tuple[PixelBudget, int] | None:
    """(budget, patch factor) to fit images with, for a Qwen-VL style processor; None for a processor
    without pixel bounds (text-only, or another VLM family: its images are left as they are)."""
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None or not hasattr(image_processor, "merge_size"):
        return None
    try:
        return budget_of(image_processor), patch_factor(image_processor)
    except UserError:
        return None


def patch_factor(image_processor: Any) -> int:
    """Pixels per side of one image token: patch_size * merge_size (28 for Qwen2-VL / Qwen2.5-VL)."""
    return int(image_processor.patch_size) * int(image_processor.merge_size)


def fitted_size(width: int, height: int, budget: PixelBudget, factor: int = 28) -> tuple[int, int]:
    """(width, height) a Qwen-VL processor resizes an image to: sides multiples of ``factor``, area in the
    budget, aspect ratio kept as closely as possible (transformers' own ``smart_resize`` rule)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    h, w = smart_resize(
        height, width, factor=factor, min_pixels=budget.min_pixels, max_pixels=budget.max_pixels
    )
    return w, h


def image_tokens(width: int, height: int, budget: PixelBudget, factor: int = 28) -> int:
    """Image tokens (after the 2 x 2 merge) of a ``width`` x ``height`` image under ``budget``."""
    w, h = fitted_size(width, height, budget, factor)
    return (w // factor) * (h // factor)


def fit_image(image: Any, budget: PixelBudget, factor: int = 28) -> Any:
    """``image`` (PIL) resized to :func:`fitted_size` (bicubic, as the processor), in RGB; unchanged when it
    already fits. Any Qwen-VL processor whose budget contains ``budget`` then leaves it as it is."""
    from PIL import Image

    if image.mode != "RGB":
        image = image.convert("RGB")
    size = fitted_size(image.width, image.height, budget, factor)
    if size == (image.width, image.height):
        return image
    return image.resize(size, Image.Resampling.BICUBIC)


def fit_row_images(rows: list[dict], budget: PixelBudget, factor: int = 28) -> None:
    """Fit the ``images`` of dataset rows (TRL's generation batch) into ``budget`` in place, before any
    processor sees them. Rows of one prompt (same ``id``) repeat num_generations times: fitted once."""
    done: dict[tuple, list] = {}
    for row in rows:
        images = row.get("images")
        if not images:
            continue
        key = (row.get("id"), len(images))
        if row.get("id") is None or key not in done:
            done[key] = [fit_image(image, budget, factor) for image in images]
        row["images"] = list(done[key])
