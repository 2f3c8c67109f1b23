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

.PHONY: install demo test slow_test system_deps quality style tiny data reproduce bench eval smoke_gpu clean

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

quality: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

style: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The full tiny mini-replication (fair protocol: 5 methods x 3-entry tuning grid, the selection at 3 seeds, 4
# ablations; ~90 min on 2 cores, REPRODUCE.md section 5): results/tiny/
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
	rm -rf $(VENV) .cache
