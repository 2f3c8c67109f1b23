"""The CPU lock and the GPU environment agree on the fast movers; torch is never left unpinned; the GPU
vLLM is one TRL supports and its own pins hold."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import requires

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

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
    assert cpu["torch"] == "2.14.1" and cpu["torchvision"] == "0.29.1"
    assert gpu["torch"] == "2.13.0" and gpu["torchvision"] == "0.28.0" and "vllm" in gpu
    # every line of the CPU lock is an exact pin (installed with --no-deps: nothing may float)
    for line in (REPO_ROOT / "requirements-cpu.txt").read_text().splitlines():
        assert not line.strip() or line.startswith("#") or "==" in line, line


# What vLLM wheels declare (Requires-Dist in their METADATA, read from the wheels with `pip download
# vllm==V --no-deps`: vLLM cannot be installed on the CPU machines, so the facts are recorded here).
VLLM_REQUIRES = {
    "0.30.0": {
        "torch": "==2.13.0",
        "torchvision": "==0.28.0",
        "transformers": ">=5.10.4",
        "tokenizers": ">=0.21.1",
    },
    "0.31.0": {"torch": "==2.13.0", "torchvision": "==0.28.0", "transformers": ">=5.10.4,<5.18.0"},
    "0.33.0": {"torch": "==2.14.0", "torchvision": "==0.29.0", "transformers": ">=5.16.1,<5.21.0"},
}


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


def test_gpu_pins_satisfy_vllms_own_requirements():
    gpu = gpu_pins()
    assert gpu["vllm"] in VLLM_REQUIRES, "record the vllm wheel's Requires-Dist in VLLM_REQUIRES first"
    for name, spec in VLLM_REQUIRES[gpu["vllm"]].items():
        assert gpu[name] in SpecifierSet(spec), (
            f"vllm {gpu['vllm']} needs {name}{spec}, environment.yml has {gpu[name]}"
        )


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO_ROOT / "README.md").read_text()
    ci = [
        ln
        for ln in (REPO_ROOT / ".ci" / "run").read_text().splitlines()
        if ln.strip() and not ln.startswith("#") and not ln.startswith("set ") and not ln.startswith("cd ")
    ]
    assert ci == ["make test", "make slow_test"]
    assert "make test" in readme and "make demo" in readme
    assert "CI runs exactly this, then `make slow_test`: .ci/run" in readme
