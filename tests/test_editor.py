"""The VS Code launch and task files (.vscode/) stay runnable: every script, module, flag and input they
name exists in this checkout and is accepted by the entry point it is passed to."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

from conftest import REPO

VSCODE = REPO / ".vscode"
WORKSPACE = "${workspaceFolder}"
INTERPRETER = "${workspaceFolder}/.venv/bin/python"
FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def strip_jsonc(text: str) -> str:
    """VS Code reads these files as JSON with comments and trailing commas; plain json does not."""
    out, i, in_string = [], 0, False
    while i < len(text):
        c = text[i]
        if in_string:
            out.append(c)
            if c == "\\":
                out.append(text[i + 1])
                i += 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
            out.append(c)
        elif text.startswith("//", i):
            i = text.find("\n", i)
            i = len(text) if i < 0 else i
            continue
        elif text.startswith("/*", i):
            i = text.index("*/", i) + 2
            continue
        else:
            out.append(c)
        i += 1
    return re.sub(r",(\s*[}\]])", r"\1", "".join(out))


def load(name: str) -> dict:
    return json.loads(strip_jsonc((VSCODE / name).read_text()))


def repo_path(value: str) -> Path:
    """A path written as ${workspaceFolder}[/...], so that it works in any checkout."""
    assert value == WORKSPACE or value.startswith(WORKSPACE + "/"), f"{value}: paths must start with {WORKSPACE}"
    return REPO / value[len(WORKSPACE) + 1:]


def help_text(entry: tuple[str, str]) -> str:
    """`--help` of an entry point: ("program", "run/x.py") or ("module", "pkg.mod")."""
    return _help_text(*entry)


@lru_cache(maxsize=None)
def _help_text(kind: str, target: str) -> str:
    command = [sys.executable, str(REPO / target)] if kind == "program" else [sys.executable, "-m", target]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([*command, "--help"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(command)} --help failed: {done.stderr[-2000:]}"
    return done.stdout


def script_entry(script: Path) -> tuple[str, str]:
    """The Python entry point a run/*.sh script hands its arguments to (`exec "$MOELAB_PY" -m module "$@"`)."""
    found = re.search(r'exec\s+"\$MOELAB_PY"\s+-m\s+([\w.]+)\s+"\$@"', script.read_text())
    assert found, f"{script.relative_to(REPO)}: no `exec \"$MOELAB_PY\" -m MODULE \"$@\"` line to check its arguments against"
    return ("module", found.group(1))


def check_arguments(args: list[str], entry: tuple[str, str], where: str) -> None:
    """Every flag is one the entry point's --help lists; a launch mode is one of its choices; files exist."""
    text = help_text(entry)
    known = set(FLAG.findall(text))
    for arg in args:
        if arg.startswith("-"):
            assert arg.split("=")[0] in known, f"{where}: {arg} is not an option of {entry[1]} ({sorted(known)})"
        elif arg.startswith("${"):
            continue  # an input prompt or the open file
        elif re.search(r"\.(ya?ml|py|sh)$", arg):
            assert (REPO / arg).is_file(), f"{where}: {arg} does not exist"
    if entry == ("module", "moelab.launch"):
        choices = re.search(r"\{([\w,]+)\}", text)
        assert choices, "moelab.launch --help lists no modes"
        positional = [a for a in args if not a.startswith("-")]
        assert positional and positional[0] in choices.group(1).split(","), f"{where}: mode {positional[:1]} not in {{{choices.group(1)}}}"


def test_launch_configurations_name_existing_programs_modules_and_flags():
    launch = load("launch.json")
    configs = launch["configurations"]
    assert configs, "launch.json has no configurations"
    for config in configs:
        where = f"launch.json '{config['name']}'"
        assert config["python"] == INTERPRETER, f"{where}: interpreter should be {INTERPRETER}"
        assert repo_path(config["cwd"]).is_dir()
        if "program" in config:
            program = repo_path(config["program"])
            assert program.is_file(), f"{where}: {program} does not exist"
            entry = ("program", str(program.relative_to(REPO)))
        else:
            module = config["module"]
            sys.path.insert(0, str(REPO / "src"))
            try:
                assert importlib.util.find_spec(module) is not None, f"{where}: module {module} is not importable"
            finally:
                sys.path.remove(str(REPO / "src"))
            entry = ("module", module)
        check_arguments(config.get("args", []), entry, where)


def test_launch_inputs_are_all_defined_and_used():
    launch = load("launch.json")
    defined = {item["id"] for item in launch.get("inputs", [])}
    used = set(re.findall(r"\$\{input:(\w+)\}", json.dumps(launch["configurations"])))
    assert used <= defined, f"inputs used but not defined: {sorted(used - defined)}"
    assert defined <= used, f"inputs defined but never used: {sorted(defined - used)}"


def test_launch_covers_the_debugging_entry_points():
    configs = load("launch.json")["configurations"]
    args = [(c.get("program", c.get("module", "")), c.get("args", [])) for c in configs]
    assert any(p.endswith("run/train_models.py") and "--index" not in a for p, a in args), "no job-folder debug config"
    assert any(p.endswith("run/train_models.py") and "--index" in a for p, a in args), "no --index debug config"
    assert any(p == "moelab.launch" and a[:1] == ["run_here"] and "--workers" in a for p, a in args), "no run_here config"
    assert any(p == "pytest" and "${file}" in a for p, a in args), "no current-test-file config"
    # run_here trains in spawned worker processes: breakpoints there need the debugger to follow them
    for config in configs:
        if config.get("module") == "moelab.launch":
            assert config.get("subProcess") is True, f"{config['name']}: subProcess must be true"


def test_tasks_run_existing_scripts_with_accepted_arguments():
    tasks = load("tasks.json")["tasks"]
    assert tasks, "tasks.json has no tasks"
    scripts = set()
    for task in tasks:
        where = f"tasks.json '{task['label']}'"
        assert task.get("type") == "process", f"{where}: use process tasks (no shell quoting to go wrong)"
        command, args = task["command"], list(task.get("args", []))
        assert repo_path(task["options"]["cwd"]).is_dir()
        assert command in ("bash", INTERPRETER), f"{where}: run scripts with bash or {INTERPRETER}, not {command}"
        script = repo_path(args.pop(0))
        assert script.is_file(), f"{where}: {script} does not exist"
        scripts.add(str(script.relative_to(REPO)))
        if command == "bash":
            assert script.suffix == ".sh", f"{where}: bash runs a shell script, not {script.name}"
            entry = script_entry(script)
        else:
            assert script.suffix == ".py", f"{where}: python runs a .py file, not {script.name}"
            entry = ("program", str(script.relative_to(REPO)))
        check_arguments(args, entry, where)
    assert {"run/launch_experiment.sh", "run/create-plots.py", "run/test.sh"} <= scripts
    modes = {t["args"][1] for t in tasks if t["args"][0].endswith("launch_experiment.sh")}
    assert {"run_here", "status"} <= modes, f"tasks cover modes {modes}"


def test_the_interpreter_is_the_venv_the_run_scripts_build():
    assert 'venv="$moelab_repo/.venv"' in (REPO / "run/env.sh").read_text()


def test_vscode_files_are_not_git_ignored():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    for name in ("launch.json", "tasks.json"):
        done = subprocess.run(["git", "check-ignore", "-q", f".vscode/{name}"], cwd=REPO)
        assert done.returncode == 1, f".vscode/{name} is ignored by git (check-ignore exit {done.returncode})"


def test_strip_jsonc_keeps_strings_and_drops_comments():
    text = '{\n // a comment\n "url": "http://x//y", /* block */ "a": [1, 2,],\n}'
    assert json.loads(strip_jsonc(text)) == {"url": "http://x//y", "a": [1, 2]}
