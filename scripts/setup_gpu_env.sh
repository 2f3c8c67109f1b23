#!/usr/bin/env bash
# Create the GPU conda environment from environment.yml, then apply the two pins pip cannot resolve.
#   bash scripts/setup_gpu_env.sh            (env name: tgrl; FLASH_ATTN=1 also builds flash-attn)
set -euo pipefail
cd "$(dirname "$0")/.."
ENV_NAME=${ENV_NAME:-tgrl}
command -v conda >/dev/null || { echo "error: conda not found; install Miniforge, or use 'make install' for the CPU tier"; exit 2; }
if conda env list | grep -qE "^${ENV_NAME}\s"; then
  conda env update -n "$ENV_NAME" -f environment.yml
else
  conda env create -n "$ENV_NAME" -f environment.yml
fi
conda run -n "$ENV_NAME" pip install --no-deps latex2sympy2==1.9.1 antlr4-python3-runtime==4.9.3
if [ "${FLASH_ATTN:-0}" = "1" ]; then
  conda run -n "$ENV_NAME" pip install --no-build-isolation flash-attn==2.8.3.post2
fi
conda run -n "$ENV_NAME" python -c "import torch, vllm, transformers, trl; print('tgrl GPU env: torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'vllm', vllm.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__)"
