# Sourced by the run/ scripts: pick the Python that has moelab, building .venv on first use.
# Uses the active environment when moelab (this checkout of it) imports there; else creates or
# updates .venv in the repository with `pip install -e .[test]`.

moelab_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
moelab_python() {
    local active="${PYTHON:-python3}"
    local here
    here="$(realpath "$moelab_repo/src/moelab/__init__.py")"
    if [ "$("$active" -c 'import moelab, os; print(os.path.realpath(moelab.__file__))' 2>/dev/null)" = "$here" ]; then
        MOELAB_PY="$active"
        return
    fi
    local venv="$moelab_repo/.venv"
    # reinstall when pyproject.toml changes (an editable install picks up code changes by itself)
    local stamp="$venv/.moelab-install-stamp"
    local want
    want="$(sha256sum < "$moelab_repo/pyproject.toml" | cut -c1-16)"
    if [ ! -x "$venv/bin/python" ]; then
        echo "moelab: creating $venv (first use; installing torch takes a few minutes)" >&2
        "$active" -m venv "$venv"
    fi
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "moelab: installing moelab and its dependencies into $venv" >&2
        "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
        "$venv/bin/python" -m pip install --quiet -e "$moelab_repo[test]" >&2
        echo "$want" > "$stamp"
    fi
    MOELAB_PY="$venv/bin/python"
}
