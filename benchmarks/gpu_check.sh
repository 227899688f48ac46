#!/usr/bin/env bash
# Whenever a GPU machine is available: the tests that touch what a GPU changes (precision, fused
# training, MoE dispatch, models), then benchmarks/gpu_check.py's table. At most 8 minutes.
#   bash benchmarks/gpu_check.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../run/env.sh"
moelab_python
cd "$moelab_repo"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 150 "$MOELAB_PY" -m pytest -q -x -m "not slurm and not browser and not slow" \
    tests/test_precision.py tests/test_fused.py tests/test_models.py tests/test_routers.py
timeout 330 "$MOELAB_PY" benchmarks/gpu_check.py
