# Sourced by the run/ scripts: pick the Python that has moelab, building .venv on first use.
# Uses the active environment when moelab imports there; else creates or updates .venv in the repo.
# MOELAB_EXTRAS (e.g. "test") adds optional dependencies to the install.

moelab_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
moelab_python() {
    local extras="${MOELAB_EXTRAS:-}"
    local active="${PYTHON:-python3}"
    if [ -z "$extras" ] && "$active" -c "import moelab" >/dev/null 2>&1 \
        && [ "$("$active" -c 'import moelab, os; print(os.path.realpath(moelab.__file__))')" = "$(realpath "$moelab_repo/src/moelab/__init__.py")" ]; then
        MOELAB_PY="$active"
        return
    fi
    local venv="$moelab_repo/.venv"
    # reinstall when pyproject.toml or the extras change (editable install: code changes need nothing)
    local stamp="$venv/.moelab-install-stamp"
    local want
    want="$(cat "$moelab_repo/pyproject.toml" | sha256sum | cut -c1-16)-${extras}"
    if [ ! -x "$venv/bin/python" ]; then
        echo "moelab: creating $venv (first use; installing torch takes a few minutes)" >&2
        "$active" -m venv "$venv"
    fi
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "moelab: installing moelab${extras:+[$extras]} into $venv" >&2
        "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
        "$venv/bin/python" -m pip install --quiet -e "$moelab_repo${extras:+[$extras]}" >&2
        echo "$want" > "$stamp"
    fi
    MOELAB_PY="$venv/bin/python"
}
