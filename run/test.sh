#!/usr/bin/env bash
# The test suite (builds .venv with the test extras on first use). Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
MOELAB_EXTRAS=test moelab_python
cd "$moelab_repo"
exec "$MOELAB_PY" -m pytest "$@"
