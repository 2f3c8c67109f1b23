# Shared by scripts/run_{tgrl,grpo,sft_rl}_7b.sh and scripts/run_tiny.sh (sourced, not run directly):
# recipe lookups, the preflight, and one `launch` that prints the exact command and runs it.
#
# Environment (all optional):
#   MODEL DATA OUTPUT SEED   override the recipe's model_name_or_path / train_file / output_dir / seed
#   ZERO=2|3                 DeepSpeed ZeRO stage (train/accelerate/zeroN.yaml -> train/deepspeed/zeroN.json)
#   NUM_GPUS=8 NNODES=1 NODE_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29500   (multi-node: same on every node)
#   VLLM_MODE=colocate|server (server: start `trl vllm-serve --model ...` on other GPUs first;
#                             VLLM_SERVER_HOST / VLLM_SERVER_PORT)
#   FREEZE_VISION=1|0        freeze the vision tower (recipe default: 1 at 7B)
#   WANDB_PROJECT            report to Weights & Biases (default: metrics.jsonl only)
#   DRY_RUN=1                print the command(s) and the preflight findings, run nothing, exit 0
#   PY ACCELERATE            interpreter / accelerate binary (default: .venv/bin/...)

PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
ACCELERATE=${ACCELERATE:-.venv/bin/accelerate}
[ -x "$ACCELERATE" ] || ACCELERATE=accelerate
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}
PREFLIGHT_FAILED=0

# recipe_value FILE KEY [overrides...]: the value a run will use (a key=value override wins).
recipe_value() {
  local file=$1 key=$2 value
  shift 2
  for arg in "$@"; do case $arg in "$key="*) value=${arg#*=} ;; esac; done
  if [ -z "${value:-}" ] && [ -f "$file" ]; then
    value=$(sed -n "s/^$key:[[:space:]]*\([^#]*\).*/\1/p" "$file" | head -n 1 | sed 's/[[:space:]]*$//')
  fi
  printf '%s' "${value:-}"
}

fail() { # a preflight finding: fatal for a real run, reported only for a dry run
  echo "preflight: FAIL $*" >&2
  PREFLIGHT_FAILED=1
}

check_packages() { # check_packages pkg...: importable by $PY
  local missing
  missing=$("$PY" - "$@" <<'PYCODE' 2>/dev/null || echo "(python not runnable: $PY)"
import importlib.util, sys
print(" ".join(p for p in sys.argv[1:] if importlib.util.find_spec(p) is None))
PYCODE
)
  [ -z "$missing" ] || fail "python packages missing: $missing (install the environment: environment.yml / make install)"
}

check_path() { # check_path WHAT PATH HINT
  [ -e "$2" ] || fail "$1 not found: $2. Fix: $3"
}

check_gpus() { # check_gpus N
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    fail "nvidia-smi not found: no NVIDIA driver on this machine (the 7B runs need $1 GPUs per node)"
    return
  fi
  local n
  n=$(nvidia-smi --list-gpus 2>/dev/null | grep -c '^GPU' || true)
  [ "$n" -ge "$1" ] || fail "found $n GPU(s), NUM_GPUS=$1 needs $1. Fix: NUM_GPUS=$n (keep the global batch: raise gradient_accumulation_steps)"
}

finish_preflight() {
  if [ "$PREFLIGHT_FAILED" = 1 ]; then
    if [ "${DRY_RUN:-0}" = 1 ]; then
      echo "preflight: findings above are not fatal in a dry run" >&2
    else
      echo "preflight failed: nothing was started (DRY_RUN=1 prints the command without checks failing)" >&2
      exit 2
    fi
  else
    echo "preflight: ok" >&2
  fi
}

# run_cmd CMD...: print the exact command; run it unless DRY_RUN=1.
run_cmd() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  [ "${DRY_RUN:-0}" = 1 ] || "$@"
}
