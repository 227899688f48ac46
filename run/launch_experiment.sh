#!/usr/bin/env bash
# Run an experiment grid:  bash run/launch_experiment.sh run_here [EXPERIMENT_FILE] [key=value ...] [--workers N] [--force] [--rerun-failed]
# On SLURM:  bash run/launch_experiment.sh submit [EXPERIMENT_FILE] [key=value ...] [--dry-run] [--rerun-failed] [--force]
# Job states:  bash run/launch_experiment.sh status experiments/<name>   (--help: every option)
# Experiments and their state counts:  bash run/launch_experiment.sh list
# End its SLURM arrays:  bash run/launch_experiment.sh cancel experiments/<name>
# Remove failed jobs or a whole experiment:  bash run/launch_experiment.sh clean experiments/<name> --failed|--all [--yes]
# Copy finished runs into MLflow or W&B (offline):  bash run/launch_experiment.sh export mlflow|wandb experiments/<name> [--to PATH]
# Download a dataset (checksums verified):  bash run/launch_experiment.sh fetch mnist|fashion_mnist|cifar10 [--root data] [--mirror URL]
# Dashboard and predictions:  bash run/launch_experiment.sh serve [experiments/<name> ...] [--port N] [--host H]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
moelab_python
cd "$moelab_repo"
if [ "${1:-}" = serve ]; then
    shift
    exec "$MOELAB_PY" -m moelab.serve "$@"
fi
exec "$MOELAB_PY" -m moelab.launch "$@"
