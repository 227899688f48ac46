#!/usr/bin/env bash
# Run an experiment grid:  bash run/launch_experiment.sh run_here [EXPERIMENT_FILE] [key=value ...] [--workers N] [--force] [--rerun-failed]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
moelab_python
cd "$moelab_repo"
exec "$MOELAB_PY" -m moelab.launch "$@"
