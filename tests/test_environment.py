"""The CPU lock and the GPU environment agree on the fast movers; torch is never left unpinned."""

from __future__ import annotations

import re
import tomllib

import yaml

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
    assert gpu["torch"] == "2.14.0" and gpu["torchvision"] == "0.29.0" and "vllm" in gpu
    # every line of the CPU lock is an exact pin (installed with --no-deps: nothing may float)
    for line in (REPO_ROOT / "requirements-cpu.txt").read_text().splitlines():
        assert not line.strip() or line.startswith("#") or "==" in line, line


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO_ROOT / "README.md").read_text()
    ci = [
        ln
        for ln in (REPO_ROOT / ".ci" / "run").read_text().splitlines()
        if ln.strip() and not ln.startswith("#") and not ln.startswith("set ") and not ln.startswith("cd ")
    ]
    assert ci == ["make test"]
    assert "make test" in readme and "make demo" in readme
