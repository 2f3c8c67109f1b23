# Shared by scripts/run_{tgrl,grpo,sft_rl}_7b.sh and scripts/run_tiny.sh (sourced, not run directly):
# recipe lookups, the preflight, and one `launch` that prints the exact command and runs it.
#
# Environment (all optional):
#   MODEL DATA OUTPUT SEED   override the recipe's model_name_or_path / train_file / output_dir / seed
#   ZERO=2|3                 DeepSpeed ZeRO stage (train/accelerate/zeroN.yaml -> train/deepspeed/zeroN.json)
#   NUM_GPUS=8 NNODES=1 NODE_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29500   (multi-node: same on every node)
#   KEEP_GLOBAL_BATCH=1      rescale gradient_accumulation_steps / steps_per_generation to the GPU count
#                            (recipes assume RECIPE_GPUS=8); 0 = the batch grows with the GPUs
#   SHARED_OUTPUT_OK=1       multi-node: accept an output_dir filesystem the preflight cannot tell is shared
#   CHECKPOINTS=full|last|model_only   full: the recipe's save_total_limit; last: keep 1; model_only: weights
#                            only, no resume (7B: ~108 GB per full checkpoint, ~17 GB model-only; CKPT_GB)
#   VLLM_MODE=colocate|server (server: start `trl vllm-serve --model ...` on other GPUs first;
#                             VLLM_SERVER_HOST / VLLM_SERVER_PORT)
#   FREEZE_VISION=1|0        freeze the vision tower (recipe default: 1 at 7B)
#   WANDB_PROJECT            report to Weights & Biases (default: metrics.jsonl only)
#   DRY_RUN=1                print the command(s) and the preflight findings, run nothing, exit 0
#   PY ACCELERATE            interpreter / accelerate binary (default: .venv/bin/...)

PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || command -v "$PY" >/dev/null 2>&1 || PY=python3
ACCELERATE=${ACCELERATE:-.venv/bin/accelerate}
[ -x "$ACCELERATE" ] || command -v "$ACCELERATE" >/dev/null 2>&1 || ACCELERATE=accelerate
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
  [ "$n" -ge "$1" ] || fail "found $n GPU(s), NUM_GPUS=$1 needs $1. Fix: NUM_GPUS=$n (the launcher keeps the global batch: KEEP_GLOBAL_BATCH)"
}

# driver_finding: empty when the NVIDIA driver can run the CUDA version $PY's torch was built for (or either
# is unknown), else what is wrong and what to install. The pinned torch 2.13.0 (environment.yml) is a CUDA 13
# build: CUDA 13.x needs driver >= 580, 12.x >= 525, 11.x >= 450 (NVIDIA's minimum for minor-version
# compatibility). An older driver shows up only as torch.cuda.is_available() False, hence this check.
driver_finding() {
  local torch_cuda torch_version cuda driver need
  torch_cuda=$("$PY" -c "import torch; print(torch.__version__, torch.version.cuda or '')" 2>/dev/null | tail -n 1 || true)
  read -r torch_version cuda <<<"$torch_cuda" || true
  driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1 | tr -d '[:space:]' || true)
  [ -n "${cuda:-}" ] && [ -n "$driver" ] || return 0
  case ${cuda%%.*} in 13) need=580 ;; 12) need=525 ;; 11) need=450 ;; *) return 0 ;; esac
  case ${driver%%.*} in '' | *[!0-9]*) return 0 ;; esac
  if [ "${driver%%.*}" -lt "$need" ]; then
    printf '%s' "NVIDIA driver $driver is too old for torch $torch_version (a CUDA $cuda build: needs driver >= $need). Fix: install NVIDIA driver >= $need (e.g. Debian/Ubuntu: the nvidia-driver-$need package or newer, or your cluster's CUDA $cuda driver module); nvidia-smi shows the driver version"
  fi
}

existing_parent() { # the path itself or its nearest existing ancestor
  local dir=$1
  while [ ! -e "$dir" ] && [ "$dir" != / ] && [ "$dir" != . ]; do dir=$(dirname "$dir"); done
  printf '%s' "$dir"
}

check_shared_output() { # check_shared_output DIR: multi-node runs need one output_dir all nodes see
  local dir fs
  dir=$(existing_parent "$1")
  fs=$(stat -f -c %T "$dir" 2>/dev/null || echo unknown)
  case $fs in
    nfs* | lustre | gpfs | beegfs | cifs | smb* | ceph* | glusterfs | fuse* | wekafs | panfs | 9p) ;;
    ext2/ext3 | ext4 | xfs | btrfs | tmpfs | overlay* | zfs | f2fs | ramfs)
      fail "output_dir $1 is on a local filesystem ($fs) but NNODES>1: node 0 writes the checkpoints and every node reads them on resume. Fix: OUTPUT=/path/on/shared/storage (or SHARED_OUTPUT_OK=1 if $fs is shared here)" ;;
    *) echo "preflight: output_dir $1 is on '$fs': make sure every node sees the same folder" >&2 ;;
  esac
}

check_checkpoint_space() { # check_checkpoint_space DIR MODE SAVE_TOTAL_LIMIT GB_PER_CHECKPOINT
  local dir=$1 mode=$2 kept=${3:-1} each=$4 need free_kb
  [ -n "$kept" ] || kept=1
  case $mode in last) kept=1 ;; model_only) each=17 ;; esac
  need=$((kept * each))
  echo "preflight: checkpoints ($mode): ~$each GB each x $kept kept = ~$need GB in $dir" >&2
  free_kb=$(df -Pk "$(existing_parent "$dir")" 2>/dev/null | awk 'NR == 2 {print $4}')
  if [ -n "$free_kb" ] && [ "$((free_kb / 1048576))" -lt "$need" ]; then
    echo "preflight: WARN only $((free_kb / 1048576)) GB free there (CHECKPOINTS=last or model_only need less)" >&2
  fi
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
