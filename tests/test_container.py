"""The container recipes (slurm/container/) stay in step with pyproject.toml and with each other, checked
without building: the Dockerfile and the Apptainer def copy the same files and run the same install
steps, the project is installed from the copied source (its dependencies are not listed again), the
base's Python satisfies requires-python, and the build script parses."""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib

import pytest
from packaging.specifiers import SpecifierSet
from packaging.requirements import Requirement

from conftest import REPO

CONTAINER = REPO / "slurm" / "container"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# python3 of each Debian release; a base of another release must be added here (and checked) first
DEBIAN_PYTHON = {"bullseye": "3.9", "bookworm": "3.11", "trixie": "3.13"}
STEPS = ["system", "deps", "project"]


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (CONTAINER / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*(\w+)\s+(.*)$", joined, re.M)]


def def_sections() -> tuple[dict, dict]:
    """The def file's header (Bootstrap, From) and its %sections, each a list of non-comment lines."""
    header, sections, current = {}, {}, None
    for line in (CONTAINER / "moelab.def").read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("%"):
            current = stripped[1:].split()[0]
            sections[current] = []
        elif current is None:
            key, _, value = stripped.partition(":")
            header[key.strip()] = value.strip()
        else:
            sections[current].append(stripped)
    return header, sections


def docker_copies() -> set[tuple[str, str]]:
    """(source, destination file or folder) for every COPY, a COPY into a folder split per source."""
    pairs = set()
    for instruction, args in dockerfile():
        if instruction != "COPY":
            continue
        *sources, dest = [a for a in shlex.split(args) if not a.startswith("--")]
        for source in sources:
            pairs.add((source, dest + source.rsplit("/", 1)[-1] if dest.endswith("/") else dest))
    return pairs


def def_copies() -> set[tuple[str, str]]:
    _, sections = def_sections()
    return {tuple(line.split()) for line in sections["files"]}


def install_steps(commands: list[str]) -> list[str]:
    return [m.group(1) for command in commands for m in re.finditer(r"install\.sh\s+(\w+)", command)]


def build_sh_array(name: str) -> list[str]:
    found = re.search(rf"^{name}=\(([^)]*)\)", (CONTAINER / "build.sh").read_text(), re.M)
    assert found, f"build.sh defines no {name}=(...)"
    return found.group(1).split()


def shell_value(path, name: str) -> str:
    found = re.search(rf"^{name}=(\S+)$", path.read_text(), re.M)
    assert found, f"{path.name} sets no {name}"
    return found.group(1).strip("\"'")


def base_images() -> dict[str, str]:
    args = [a for i, a in dockerfile() if i == "ARG" and a.startswith("BASE=")]
    assert args, "the Dockerfile declares no ARG BASE=<default image>"
    assert dict(dockerfile())["FROM"] == "${BASE}", "the Dockerfile must build FROM ${BASE}"
    header, _ = def_sections()
    return {"Dockerfile": args[0].split("=", 1)[1], "moelab.def": header["From"],
            "build.sh": shell_value(CONTAINER / "build.sh", "DEFAULT_BASE")}


def test_every_copied_file_exists_and_is_in_the_build_context():
    staged = build_sh_array("CONTEXT_PATHS")
    for source, _ in docker_copies() | def_copies():
        assert (REPO / source).exists(), f"the recipes copy {source}, which does not exist"
        assert any(source == p or source.startswith(p + "/") for p in staged), \
            f"the Dockerfile copies {source} but build.sh does not put it in the build context {staged}"
    for path in staged:
        assert (REPO / path).exists(), f"build.sh stages {path}, which does not exist"


def test_dockerfile_and_def_copy_the_same_files_to_the_same_places():
    assert docker_copies() == def_copies(), (
        f"only in the Dockerfile: {sorted(docker_copies() - def_copies())}; "
        f"only in moelab.def: {sorted(def_copies() - docker_copies())}")


def test_dockerfile_and_def_run_the_same_install_steps():
    _, sections = def_sections()
    docker_runs = [args for instruction, args in dockerfile() if instruction == "RUN"]
    assert install_steps(docker_runs) == STEPS
    assert install_steps(sections["post"]) == STEPS
    # nothing else is installed outside the shared script
    for command in docker_runs + sections["post"]:
        assert "install.sh" in command, f"a build step outside install.sh: {command}"
    script = (CONTAINER / "install.sh").read_text()
    assert re.findall(r"^(\w+)\)$", script, re.M) == STEPS, "install.sh's steps differ from the recipes'"


def test_both_images_put_the_same_venv_on_path():
    venv = shell_value(CONTAINER / "install.sh", "VENV").replace("$ROOT", shell_value(CONTAINER / "install.sh", "ROOT"))
    docker_env = " ".join(args for instruction, args in dockerfile() if instruction == "ENV")
    _, sections = def_sections()
    assert f"PATH={venv}/bin:$PATH" in docker_env
    assert f"export PATH={venv}/bin:$PATH" in sections["environment"]


def test_the_project_is_installed_from_the_copied_source_tree():
    root = shell_value(CONTAINER / "install.sh", "ROOT")
    destinations = {dest for _, dest in docker_copies()}
    for needed in ("pyproject.toml", "README.md", "src"):  # README.md: pyproject's readme, read by the build
        assert f"{root}/{needed}" in destinations, f"{needed} is not copied to {root}, where install.sh installs from"
    script = (CONTAINER / "install.sh").read_text()
    assert 'target="$ROOT${extras:+[$extras]}"' in script
    assert re.search(r'^\s*"\$VENV/bin/python" -m pip install "\$target"$', script, re.M), \
        "install.sh must pip install the source tree ($target)"


def test_no_dependency_is_listed_outside_pyproject():
    names = {Requirement(r).name.lower() for r in PYPROJECT["project"]["dependencies"]}
    names |= {Requirement(r).name.lower() for extra in PYPROJECT["project"]["optional-dependencies"].values() for r in extra}
    for path in (CONTAINER / "Dockerfile", CONTAINER / "moelab.def", CONTAINER / "install.sh"):
        for line in path.read_text().splitlines():
            if "pip install" in line and not line.lstrip().startswith("#"):
                words = {w.strip("\"'").split("=")[0].split(">")[0].lower() for w in line.split()}
                assert not names & words, f"{path.name} installs {sorted(names & words)} by name: {line.strip()}"


def test_extras_named_anywhere_are_defined_in_pyproject():
    defined = set(PYPROJECT["project"]["optional-dependencies"])
    default = [a.split("=", 1)[1] for i, a in dockerfile() if i == "ARG" and a.startswith("EXTRAS=")]
    assert default == [""], "the image installs the runtime only unless --extras is given"
    # the examples in build.sh's usage, and the development installs (run/env.sh, environment.yml)
    named = re.findall(r"^#.*--extras ([a-z][\w-]*)", (CONTAINER / "build.sh").read_text(), re.M)
    assert named, "build.sh's usage shows no --extras example"
    for path in ("run/env.sh", "environment.yml", "README.md"):
        named += re.findall(r"-e \S*?\[(\w+)\]", (REPO / path).read_text())
    assert set(named) <= defined, f"extras named but not defined in pyproject.toml: {sorted(set(named) - defined)}"


def test_base_python_satisfies_requires_python():
    bases = base_images()
    assert len(set(bases.values())) == 1, f"the recipes start from different bases: {bases}"
    image = next(iter(bases.values()))
    codename = re.match(r"(?:[\w./-]+/)?debian:(\w+)", image)
    assert codename and codename.group(1) in DEBIAN_PYTHON, f"{image}: not a Debian release this test knows"
    python = DEBIAN_PYTHON[codename.group(1)]
    required = SpecifierSet(PYPROJECT["project"]["requires-python"])
    assert python in required, f"{image} has Python {python}, pyproject.toml requires {required}"
    # the locally made base must be the same release
    build = (CONTAINER / "build.sh").read_text()
    assert f"debootstrap --variant=minbase {codename.group(1)} " in build
    assert shell_value(CONTAINER / "build.sh", "LOCAL_BASE").endswith(f":{codename.group(1)}")


def test_requires_python_check_rejects_an_old_release():
    # the check above must be able to fail: Debian 11's Python is too old for this project
    assert DEBIAN_PYTHON["bullseye"] not in SpecifierSet(PYPROJECT["project"]["requires-python"])


@pytest.mark.parametrize("shell, script", [("bash", "build.sh"), ("sh", "install.sh"), ("bash", "install.sh")])
def test_scripts_parse(shell, script):
    done = subprocess.run([shell, "-n", str(CONTAINER / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_build_script_usage_and_argument_errors():
    usage = subprocess.run(["bash", str(CONTAINER / "build.sh"), "--help"], capture_output=True, text=True, timeout=30)
    assert usage.returncode == 0 and "build.sh image" in usage.stdout and "--make-base" in usage.stdout
    for args in (["nonsense"], ["image", "--no-such-option"], ["image", "--base", "x", "--make-base"],
                 ["sif", "--ca-cert", str(CONTAINER / "missing.pem")]):
        done = subprocess.run(["bash", str(CONTAINER / "build.sh"), *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == 2, f"build.sh {' '.join(args)}: exit {done.returncode}: {done.stderr}"
        assert done.stderr.startswith("build.sh: "), done.stderr
