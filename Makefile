# tgrl: one entry point for set-up, demo and tests. Every target installs what it needs first (idempotent).
# The README's two commands: `make demo` (tiny tier end to end) and `make test` (install + test suite).

PYTHON_SYS ?= python3.11
VENV       ?= .venv
PY         := $(VENV)/bin/python
PIP        := $(VENV)/bin/pip
STAMP      := $(VENV)/.tgrl-installed
export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions

.PHONY: install demo test slow_test system_deps vllm_install vllm_test quality style tiny data reproduce bench eval smoke_gpu clean

# The venv is rebuilt only when the lock file or pyproject changes. --no-deps: the lock is complete and
# carries one deliberate metadata conflict (latex2sympy2/antlr; see requirements-cpu.txt).
install: $(STAMP)
$(STAMP): requirements-cpu.txt pyproject.toml
	@command -v $(PYTHON_SYS) >/dev/null || { echo "error: $(PYTHON_SYS) not found (tgrl needs Python 3.11)"; exit 2; }
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PIP) install -q -U pip==26.3
	DS_BUILD_OPS=0 $(PIP) install -q --no-deps -r requirements-cpu.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PY) -c "import torch, torchvision, transformers, trl, lmms_eval, math_verify, tgrl; print('tgrl environment ready: torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__)"
	touch $(STAMP)

tiny: install
	$(PY) data_prep/build_tiny_model.py --out checkpoints/tiny-init --size S --seed 0

data: install
	$(PY) data_prep/make_synthetic.py --out data/synthetic --n-train 3000 --n-test 1000 --seed 0

demo: install
	bash scripts/demo.sh

test: install
	$(PY) -m pytest -q

# The slow tests (CI runs them after `make test`; .ci/run): accelerate + DeepSpeed on CPU (1 and 2 processes),
# the CPU mode of the GPU smoke run (the 7B recipe's keys on the tiny model, ZeRO-2 and ZeRO-3, 2 processes) and
# the report in a real browser. 5 tests, 11 min measured on 2 shared cores (make test: 643 tests, 11 min).
slow_test: install system_deps
	$(PY) -m pytest -q -m slow

# System packages of the slow tests, from the distribution (Debian/Ubuntu apt; a no-op when present): g++ for
# DeepSpeed's JIT-compiled CPU op (ninja comes from the lock) and Chromium, which tests/test_report.py drives
# over the DevTools protocol (no chromedriver).
APT_GET := $(if $(filter 0,$(shell id -u)),,sudo) env DEBIAN_FRONTEND=noninteractive apt-get
system_deps:
	@missing=""; \
	command -v g++ >/dev/null || missing="$$missing g++"; \
	command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  command -v apt-get >/dev/null || { echo "error: the slow tests need$$missing (not on PATH) and there is no apt-get: install them with your package manager"; exit 2; }; \
	  echo "installing$$missing (apt-get)"; \
	  $(APT_GET) update -qq && $(APT_GET) install -y -qq --no-install-recommends $$missing; \
	fi

# vLLM's image-placeholder contract (docs/design.md#85-image-placeholders-for-vllm), checked against vLLM
# 0.30.0's real multimodal processor on the CPU. vLLM pins torch 2.13.0 (a CUDA build; torchvision 0.28.0
# does not import beside the CPU build), the CPU lock 2.14.1: so an environment of its own, from
# requirements-vllm.txt. The machine's pip settings point at a local CPU torch 2.13.0 wheel that pip would
# take instead of PyPI's CUDA build: they are switched off for this install. ~4 GB of downloads, ~8 GB.
VLLM_VENV  ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.tgrl-installed
VLLM_PIP   := env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(VLLM_VENV)/bin/pip
vllm_install: $(VLLM_STAMP)
$(VLLM_STAMP): requirements-vllm.txt pyproject.toml
	@command -v $(PYTHON_SYS) >/dev/null || { echo "error: $(PYTHON_SYS) not found (tgrl needs Python 3.11)"; exit 2; }
	test -x $(VLLM_VENV)/bin/python || $(PYTHON_SYS) -m venv $(VLLM_VENV)
	$(VLLM_PIP) install -q -U pip==26.3
	$(VLLM_PIP) install -q --no-deps -r requirements-vllm.txt
	PYTHONPATH=$(CURDIR) $(VLLM_VENV)/bin/python -c "import torch, vllm, trl, tgrl; assert torch.version.cuda, 'vllm env: torch is a CPU build'; print('vllm env ready: vllm', vllm.__version__, 'torch', torch.__version__, 'trl', trl.__version__)"
	touch $(VLLM_STAMP)

# tgrl comes from the checkout (PYTHONPATH), not installed: vLLM's pinned setuptools predates our pyproject
vllm_test: vllm_install
	PYTHONPATH=$(CURDIR) $(VLLM_VENV)/bin/python -m pytest -q tests_vllm

quality: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

style: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The full tiny mini-replication (train/tiny_protocol.yaml: 5 methods x 3-entry grid x 2 tuning seeds, the frozen
# selection and 6 one-knob ablations at 8 seeds on sealed splits; `scripts/run_protocol.py --plan` estimates its
# time from the recorded runs; REPRODUCE.md section 5): results/tiny/
reproduce: install
	bash scripts/reproduce_tiny.sh

# Performance benchmarks: per-step time split, eval/teacher throughput, peak RSS (prints numbers)
bench: install
	bash scripts/bench.sh

# Every checkpoint under checkpoints/ x the tiny suite, then the tables (SUITE=paper on GPU nodes)
eval: install
	bash scripts/eval_all.sh

# One GPU: the GPU code paths on the tiny tier with the 7B recipe's keys (vLLM teacher, colocate rollouts with
# sleep mode, DeepSpeed, gradient checkpointing, save + resume, vLLM eval); it prints each stage's measured time.
# Run it in the GPU env (scripts/setup_gpu_env.sh), not the CPU .venv: no `install` dependency on purpose.
smoke_gpu:
	bash scripts/smoke_gpu.sh

clean:
	rm -rf $(VENV) $(VLLM_VENV) .cache
