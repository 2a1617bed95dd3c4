#!/usr/bin/env bash
# Run benchmarks/gpu.py on a GPU machine that has torch but neither plural nor greenlet
# installed, and no network. From the repository root:
#
#   bash benchmarks/gpu_run.sh OUT_DIR [gpu.py flags...]
#
# Expects greenlet's cp312 manylinux wheel in .whl/ and Fashion-MNIST's four IDX .gz files
# in .fmnist/ (both git-ignored, copied along with the working tree). plural is imported from
# src/. The whole run is cut at 450 s (gpu.py's own budget, 360 s by default, ends sections
# early before that); its figures are in OUT_DIR/gpu.json and OUT_DIR/gpu.md either way.
set -euo pipefail
out="${1:?usage: gpu_run.sh OUT_DIR [gpu.py flags...]}"
shift
site="$(mktemp -d)"
python3 -m zipfile -e .whl/greenlet-*.whl "$site"  # a wheel is a zip; no pip, no network
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
PYTHONPATH="$site:src" OMP_NUM_THREADS=1 timeout 450 \
    python3 benchmarks/gpu.py --device cuda --out "$out" --fmnist-dir .fmnist "$@"
