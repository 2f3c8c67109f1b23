"""Shared pytest setup: one torch thread (two threads stall at random on these 2-core machines)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault(
    "TORCH_EXTENSIONS_DIR", os.path.join(os.path.dirname(__file__), "..", ".cache", "torch_extensions")
)

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is part of every install
    pass


from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A freshly built tiny Qwen2.5-VL checkpoint folder (size S, seed 0), shared by the whole session."""
    from tgrl.tiny import build_tiny_checkpoint

    out = tmp_path_factory.mktemp("tiny") / "tiny-init"
    build_tiny_checkpoint(out, "S", seed=0)
    return out


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """A small synthetic dataset (60 train / 30 test, seed 0): OUT/{train,test}.jsonl + images."""
    from tgrl.synthetic import build_dataset

    out = tmp_path_factory.mktemp("synthetic")
    build_dataset(out, n_train=60, n_test=30, seed=0)
    return out
