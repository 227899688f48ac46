#!/usr/bin/env bash
# The test suite (builds .venv on first use). Extra arguments go to pytest.
#   bash run/test.sh            everything (CI): the dev SLURM cluster and chromium are required when CI is set
#   bash run/test.sh --quick    the daily lane: no cluster, no browser, no long end-to-end runs
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
moelab_python
quick=
if [ "${1:-}" = "--quick" ]; then
    quick=1
    shift
    set -- -m "not slurm and not browser and not slow" "$@"
fi
# the report test drives Debian's chromium: install it when we can (root with apt-get), else that test skips
if [ -z "$quick" ] && ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "moelab: installing chromium for the report test" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null
fi
cd "$moelab_repo"
exec "$MOELAB_PY" -m pytest "$@"
