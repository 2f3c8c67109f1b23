"""The CPU lock and the GPU environment agree on the fast movers; every lock line is an exact pin; the GPU
vLLM is one TRL supports, and the GPU environment is the one the vLLM contract test runs in."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import requires

import yaml
from packaging.requirements import Requirement

from tgrl.utils import REPO_ROOT

SHARED = (
    "transformers",
    "tokenizers",
    "trl",
    "accelerate",
    "datasets",
    "peft",
    "deepspeed",
    "lmms_eval",
    "math-verify",
)


def pins(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)==([^\s#;]+)\s*(#.*)?", line)
        if m:
            out[m[1].lower().replace("_", "-")] = m[2]
    return out


def test_cpu_lock_gpu_env_and_pyproject_agree():
    cpu = pins((REPO_ROOT / "requirements-cpu.txt").read_text().splitlines())
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    gpu = pins(pip_section)
    project = pins(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    for name in SHARED:
        key = name.lower().replace("_", "-")
        assert cpu[key] == gpu[key] == project[key], name
    # every line of both locks is an exact pin (installed with --no-deps: nothing may float)
    for lock in ("requirements-cpu.txt", "requirements-vllm.txt"):
        for line in (REPO_ROOT / lock).read_text().splitlines():
            assert not line.strip() or line.startswith("#") or "==" in line, (lock, line)


def gpu_pins() -> dict[str, str]:
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    return pins(next(d["pip"] for d in env["dependencies"] if isinstance(d, dict)))


def test_gpu_vllm_is_inside_trls_supported_range():
    """TRL's colocate weight sync calls vLLM internals: only the range TRL's [vllm] extra declares is tested
    by TRL. The range is read from the installed trl's own metadata."""
    gpu = gpu_pins()
    (vllm_req,) = [
        r
        for r in map(Requirement, requires("trl") or [])
        if r.name == "vllm" and r.marker and "vllm" in str(r.marker)
    ]
    assert gpu["vllm"] in vllm_req.specifier, f"vllm {gpu['vllm']} is outside trl's {vllm_req.specifier}"


def test_gpu_environment_is_the_vllm_contract_environment():
    """requirements-vllm.txt is a resolved install of vLLM with its own pins (``pip check`` clean when it was
    generated; make vllm_test runs the image-placeholder contract in it): environment.yml must install the
    same vLLM, torch, torchvision, transformers and trl, so the contract tested is the one the GPU runs."""
    gpu, lock = gpu_pins(), pins((REPO_ROOT / "requirements-vllm.txt").read_text().splitlines())
    for name in ("vllm", "torch", "torchvision", "transformers", "tokenizers", "trl", "accelerate"):
        assert gpu[name] == lock[name], (
            f"{name}: environment.yml {gpu[name]}, requirements-vllm.txt {lock[name]}"
        )
