#!/bin/sh
# Installs moelab inside a container image. Both recipes (Dockerfile and moelab.def) run these
# steps, so the Docker/Podman image and the Apptainer image hold the same environment.
#
#   install.sh system            Debian's python3 with venv and pip, git (provenance records the commit)
#   install.sh deps [EXTRAS]     the dependencies of pyproject.toml (and of the extras, e.g. "test")
#   install.sh project [EXTRAS]  moelab itself from the copied source tree, then a smoke test
#
# The sources are expected under /opt/moelab (pyproject.toml and README.md for `deps`; src/ and
# run/ too for `project`). `deps` is separate so that an image rebuilt after a code change reuses
# the cached layer with torch instead of downloading it again.
#
# A CA bundle mounted at /run/secrets/moelab_ca (build secret `moelab_ca`, or a bind in an Apptainer
# build) is used for pip's HTTPS during the build only; it is not copied into the image.
set -eu

ROOT=/opt/moelab
VENV=$ROOT/venv
step="${1:?usage: install.sh system|deps|project [EXTRAS]}"
extras="${2:-}"
target="$ROOT${extras:+[$extras]}"

if [ -s /run/secrets/moelab_ca ]; then
    export PIP_CERT=/run/secrets/moelab_ca
fi
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# a build argument left empty must not reach pip as an empty index
[ -n "${PIP_INDEX_URL:-}" ] || unset PIP_INDEX_URL
[ -n "${PIP_EXTRA_INDEX_URL:-}" ] || unset PIP_EXTRA_INDEX_URL

# pip builds in the source tree: leave no build outputs behind in the image
clean_build_outputs() {
    rm -rf "$ROOT/build" "$ROOT"/src/*.egg-info
}

case "$step" in
system)
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends python3 python3-venv ca-certificates git
    rm -rf /var/lib/apt/lists/*
    # the checkout is usually bind-mounted and owned by another user: let git read it anyway
    git config --system --add safe.directory '*'
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --upgrade pip
    ;;
deps)
    # an empty placeholder package lets pip resolve pyproject.toml's dependencies (and check
    # requires-python) before the real source is copied; it is uninstalled right after
    placeholder_made=no
    if [ ! -e "$ROOT/src/moelab/__init__.py" ]; then
        mkdir -p "$ROOT/src/moelab"
        : > "$ROOT/src/moelab/__init__.py"
        placeholder_made=yes
    fi
    "$VENV/bin/python" -m pip install "$target"
    "$VENV/bin/python" -m pip uninstall -y moelab
    if [ "$placeholder_made" = yes ]; then
        rm -rf "$ROOT/src"
    fi
    clean_build_outputs
    ;;
project)
    "$VENV/bin/python" -m pip install "$target"
    clean_build_outputs
    "$VENV/bin/python" -m pip check
    # the entry points a cluster job runs must start in the image
    cd /tmp
    "$VENV/bin/python" -c "import torch, submitit, moelab.launch.slurm.job, moelab.train.job; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
    "$VENV/bin/python" -m moelab.launch --help > /dev/null
    "$VENV/bin/python" "$ROOT/run/train_models.py" --help > /dev/null
    ;;
*)
    echo "install.sh: unknown step '$step' (system, deps or project)" >&2
    exit 2
    ;;
esac
