"""tgrl.perturb: pixel-space and patch-space perturbations agree and are deterministic
(docs/design.md#54-token-quantities)."""

import numpy as np
import pytest
import torch
from PIL import Image

from tgrl.perturb import MODES, perturb_image, perturb_pixel_values


def _img(h: int, w: int, seed: int) -> Image.Image:
    arr = np.random.default_rng(seed).integers(1, 256, (h, w, 3), dtype=np.uint8)  # no pure-black pixels
    return Image.fromarray(arr)


@pytest.fixture(scope="module")
def processor():
    from transformers import Qwen2VLImageProcessor

    # 56x56 and 56x84 lie inside [min, max] pixels and are multiples of 28 px: no resize happens
    return Qwen2VLImageProcessor(
        min_pixels=56 * 56, max_pixels=56 * 84, patch_size=14, temporal_patch_size=2, merge_size=2
    )


def _process(processor, images):
    out = processor(images=images, return_tensors="pt")
    return out["pixel_values"], out["image_grid_thw"]


# ------------------------------------------------------------------------------------------------ PIL images


def test_patch_blackening_hand_mask_and_determinism():
    img = _img(28, 42, 0)
    out = perturb_image(img, "patch_blackening", patch_size=14, prob=0.5, seed=3)
    expected = np.random.default_rng(3).random((2, 3)) < 0.5  # raster order over the 2x3 patch grid
    a, b = np.asarray(img), np.asarray(out)
    for i in range(2):
        for j in range(3):
            patch = b[14 * i : 14 * i + 14, 14 * j : 14 * j + 14]
            orig = a[14 * i : 14 * i + 14, 14 * j : 14 * j + 14]
            assert (patch == 0).all() if expected[i, j] else (patch == orig).all()
    assert np.array_equal(np.asarray(perturb_image(img, seed=3)), b)  # same seed, same image
    assert not np.array_equal(np.asarray(perturb_image(img, seed=4)), b)
    assert np.array_equal(np.asarray(img), a) and out.size == img.size  # input untouched


def test_partial_edge_patches_prob_extremes_and_full_mask():
    img = _img(20, 30, 1)  # 14-px grid of 2x3 with partial edge patches
    assert np.array_equal(np.asarray(perturb_image(img, prob=0.0, seed=0)), np.asarray(img))
    assert (np.asarray(perturb_image(img, prob=1.0, seed=0)) == 0).all()
    assert (np.asarray(perturb_image(img, "full_mask")) == 0).all()


def test_noise_mode_deterministic_and_in_range():
    img = _img(28, 28, 2)
    a = np.asarray(perturb_image(img, "noise", seed=5))
    assert np.array_equal(a, np.asarray(perturb_image(img, "noise", seed=5)))
    assert not np.array_equal(a, np.asarray(img)) and a.dtype == np.uint8
    assert np.array_equal(np.asarray(perturb_image(img, "noise", seed=5, noise_std=0.0)), np.asarray(img))


def test_unknown_mode_names_valid_ones():
    with pytest.raises(ValueError, match="patch_blackening, noise, full_mask"):
        perturb_image(_img(14, 14, 0), "blur")
    with pytest.raises(ValueError, match="patch_blackening"):
        perturb_pixel_values(
            torch.zeros(4, 1176), torch.tensor([[1, 2, 2]]), "blur", image_mean=[0] * 3, image_std=[1] * 3
        )


# ----------------------------------------------------------------------------------------------- patch space


@pytest.mark.parametrize("mode", ["patch_blackening", "full_mask"])
def test_pixel_then_process_equals_process_then_patch(processor, mode):
    images = [_img(56, 84, 10), _img(56, 56, 11)]
    pv, thw = _process(processor, images)
    assert thw.tolist() == [[1, 4, 6], [1, 4, 4]]
    kw = dict(image_mean=processor.image_mean, image_std=processor.image_std)
    patch_space = perturb_pixel_values(pv, thw, mode, prob=0.5, seed=np.random.default_rng(7), **kw)
    rng = np.random.default_rng(7)  # one generator consumed in image order, as perturb_pixel_values does
    pix_space, _ = _process(processor, [perturb_image(im, mode, 14, 0.5, seed=rng) for im in images])
    assert torch.allclose(patch_space, pix_space, atol=1e-5)
    changed = (patch_space != pv).any(1)
    if mode == "full_mask":
        assert changed.all()
    else:  # an int seed is the same as a fresh generator with that seed
        assert 0 < changed.sum() < len(pv)
        assert torch.equal(perturb_pixel_values(pv, thw, mode, 0.5, 7, **kw), patch_space)


def test_black_value_per_channel_and_untouched_rows(processor):
    pv, thw = _process(processor, [_img(56, 56, 12)])
    mean, std = processor.image_mean, processor.image_std
    out = perturb_pixel_values(pv, thw, "patch_blackening", prob=0.5, seed=1, image_mean=mean, image_std=std)
    rows = out.view(len(pv), 3, -1)
    black = [torch.isclose(rows[:, c], torch.tensor((0 - mean[c]) / std[c])).all(1) for c in range(3)]
    black_rows = torch.stack(black).all(0)
    assert torch.equal(
        black_rows, (out != pv).any(1)
    )  # a row is either all-black in every channel or untouched
    raster = torch.from_numpy(np.random.default_rng(1).random((4, 4)) < 0.5)
    # processor order (h/2, w/2, 2, 2): rows 0..3 are the 2x2 patches of the top-left merged unit
    assert black_rows[:4].tolist() == [raster[0, 0], raster[0, 1], raster[1, 0], raster[1, 1]]
    assert black_rows.sum() == raster.sum()


def test_pixel_values_noise_dtype_and_shape_checks(processor):
    pv, thw = _process(processor, [_img(56, 56, 13)])
    kw = dict(image_mean=processor.image_mean, image_std=processor.image_std)
    a = perturb_pixel_values(pv, thw, "noise", seed=2, **kw)
    assert torch.equal(a, perturb_pixel_values(pv, thw, "noise", seed=2, **kw))
    assert not torch.equal(a, pv) and a.shape == pv.shape
    v = a.view(len(pv), 3, 2, -1)
    assert torch.equal(v[:, :, 0], v[:, :, 1])  # the two temporal copies of a frame get the same noise
    mean, std = torch.tensor(kw["image_mean"]).view(1, 3, 1), torch.tensor(kw["image_std"]).view(1, 3, 1)
    pix = v[:, :, 0] * std + mean
    assert pix.min() >= -1e-5 and pix.max() <= 1 + 1e-5
    b = perturb_pixel_values(pv.bfloat16(), thw, "full_mask", **kw)
    assert b.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="add up"):
        perturb_pixel_values(pv, torch.tensor([[1, 4, 6]]), **kw)
    with pytest.raises(ValueError, match="values per patch"):
        perturb_pixel_values(pv[:, :100], thw, **kw)
    assert set(MODES) == {"patch_blackening", "noise", "full_mask"}
