#!/usr/bin/env bash
# The test suite (builds .venv on first use). Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
moelab_python
cd "$moelab_repo"
exec "$MOELAB_PY" -m pytest "$@"
