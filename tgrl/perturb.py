"""Image perturbations for visual dependency (docs/design.md#54-token-quantities) and filter F4.

Two entry points draw the same perturbed image I~ (VPPO-style, docs/anchors.md#3-vppo):
:func:`perturb_image` on a PIL image (data prep, F4) and :func:`perturb_pixel_values` on the processor's
patch tensor the trainer already holds, so its extra forward needs no second preprocessing. Modes:
``patch_blackening`` (default), ``noise``, ``full_mask``. ``seed`` is an int, a ``numpy.random.Generator``
(draws consumed in image order) or None (fresh entropy).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

MODES = ("patch_blackening", "noise", "full_mask")

# VPPO's gaussian-noise alternative uses std 189 on the 0-255 scale (docs/anchors.md#3-vppo).
DEFAULT_NOISE_STD = 189 / 255


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown perturbation mode {mode!r}; valid modes: {', '.join(MODES)}")


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def perturb_image(
    image: Image.Image,
    mode: str = "patch_blackening",
    patch_size: int = 14,
    prob: float = 0.5,
    seed: int | np.random.Generator | None = None,
    *,
    noise_std: float = DEFAULT_NOISE_STD,
) -> Image.Image:
    """Return a perturbed RGB copy of ``image`` (the input is not modified).

    The patch grid is anchored at the top-left pixel; edge patches of sides that are not a multiple of
    ``patch_size`` are partial. ``noise_std`` is in units of the [0, 1] pixel range (mode ``noise``).
    """
    _check_mode(mode)
    rng = _rng(seed)
    arr = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()  # (H, W, 3)
    h, w = arr.shape[:2]
    if mode == "full_mask":
        arr[:] = 0
    elif mode == "patch_blackening":
        gh, gw = -(-h // patch_size), -(-w // patch_size)  # ceil
        black = rng.random((1, gh, gw))[0] < prob  # same draw order as perturb_pixel_values (t=1)
        black = black.repeat(patch_size, axis=0).repeat(patch_size, axis=1)[:h, :w]
        arr[black] = 0
    else:  # noise
        noisy = arr.astype(np.float64) + rng.normal(0.0, noise_std * 255.0, size=arr.shape)
        arr = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, mode="RGB")


def perturb_pixel_values(
    pixel_values: torch.Tensor,
    image_grid_thw: torch.Tensor,
    mode: str = "patch_blackening",
    prob: float = 0.5,
    seed: int | np.random.Generator | None = None,
    *,
    image_mean: list[float] | tuple[float, ...],
    image_std: list[float] | tuple[float, ...],
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
    noise_std: float = DEFAULT_NOISE_STD,
) -> torch.Tensor:
    """Perturb Qwen2-VL processor output in patch space; returns a new tensor of the same shape/dtype.

    Layout (transformers ``Qwen2VLImageProcessor.patchify``): the images' rows are concatenated; image
    k has ``t*h*w`` rows ordered (t, h/m, w/m, m, m) with m = ``merge_size``, i.e. the 2x2 patches of a
    merged unit are consecutive; each row flattens (C, temporal_patch_size, patch_size, patch_size).
    Black in normalised units is (0 - mean_c) / std_c per channel c; pass the processor's
    ``image_mean`` / ``image_std``. Blackening acts per 14x14 patch (one row), not per merged unit.
    """
    _check_mode(mode)
    rng = _rng(seed)
    n_ch, pp = len(image_mean), patch_size * patch_size
    n_rows, dim = pixel_values.shape
    if dim != n_ch * temporal_patch_size * pp:
        raise ValueError(
            f"pixel_values has {dim} values per patch, expected C*temporal*patch^2 = "
            f"{n_ch}*{temporal_patch_size}*{pp}; check patch_size / temporal_patch_size / image_mean"
        )
    grids = [tuple(int(v) for v in g) for g in image_grid_thw.tolist()]
    if sum(t * h * w for t, h, w in grids) != n_rows:
        raise ValueError(f"image_grid_thw {grids} does not add up to {n_rows} patches in pixel_values")

    x = pixel_values.float().reshape(n_rows, n_ch, temporal_patch_size, pp).clone()
    mean = torch.tensor(image_mean, dtype=torch.float32).view(1, n_ch, 1, 1)
    std = torch.tensor(image_std, dtype=torch.float32).view(1, n_ch, 1, 1)
    black = (0.0 - mean) / std

    if mode == "full_mask":
        x[:] = black
    elif mode == "patch_blackening":
        masks = []
        for t, h, w in grids:  # one small draw per image, raster order, then the processor's order
            m = torch.from_numpy(rng.random((t, h, w)) < prob)
            m = m.view(t, h // merge_size, merge_size, w // merge_size, merge_size).permute(0, 1, 3, 2, 4)
            masks.append(m.reshape(-1))
        rows = torch.cat(masks) if masks else torch.zeros(0, dtype=torch.bool)
        x = torch.where(rows.view(-1, 1, 1, 1), black, x)
    else:  # noise: same noise on the temporal copies of a frame, clipped to the valid pixel range
        noise = torch.from_numpy(rng.normal(0.0, noise_std, size=(n_rows, n_ch, 1, pp))).float()
        pix = (x * std + mean + noise).clamp(0.0, 1.0)
        x = (pix - mean) / std
    return x.reshape(n_rows, dim).to(pixel_values.dtype)


def perturb_with_processor(
    pixel_values: torch.Tensor,
    image_grid_thw: torch.Tensor,
    image_processor,
    mode: str,
    prob: float,
    rng: np.random.Generator,
) -> torch.Tensor:
    """:func:`perturb_pixel_values` in the patch layout and normalisation of ``image_processor`` (a Qwen-VL
    image processor): the one call the trainer's token pass and the probes make."""
    return perturb_pixel_values(
        pixel_values,
        image_grid_thw,
        mode,
        prob,
        rng,
        image_mean=image_processor.image_mean,
        image_std=image_processor.image_std,
        patch_size=image_processor.patch_size,
        temporal_patch_size=image_processor.temporal_patch_size,
        merge_size=image_processor.merge_size,
    )
