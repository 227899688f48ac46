"""Model profiles: lists of variants kept in files of their own, which experiments include by name.

    variants:
      - include: models/xs.yaml            # every variant in that file, in its order
      - {name: mine, model: moe, hidden: 32}

An include path is relative to the folder of the file that names it (for an experiment file, its own
folder: experiments/configs/models/xs.yaml above). An included file holds a list of variants (or a
single variant), exactly as they would be written inline, and may itself include other files, at
most MAX_INCLUDE_DEPTH files deep; a file that includes itself, directly or not, is an error. Every
file goes through the same reading as the experiment file (size, UTF-8, nesting, duplicate keys).

Includes are replaced by the variants they name before overrides and checks, so `variants.<name>.<key>`
overrides and grid axes reach included variants, a job's key does not depend on where its variants
were written, and the experiment.yaml a launch writes holds them inline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moelab.config.errors import ConfigError
from moelab.config.yaml_input import read_yaml_file
from moelab.schema import Issue, shown

INCLUDE_KEY = "include"
MAX_INCLUDE_DEPTH = 4  # an experiment -> profile -> profile -> profile -> profile


@dataclass(frozen=True)
class Origin:
    """Where an included variant was written: the file and its position in that file's list."""

    file: str
    index: int


@dataclass
class ExpandedVariants:
    items: list  # the variants, includes replaced by what they name
    origins: list[Origin | None]  # per item; None: written in the experiment file (or on the command line)
    issues: list[Issue] = field(default_factory=list)


def expand_includes(raw_variants: Any, folder: Path) -> ExpandedVariants:
    """`raw_variants` with every include replaced by the variants of the file it names. Anything that
    is not a list is left for the variant checks to report."""
    if not isinstance(raw_variants, list):
        return ExpandedVariants(raw_variants, [])
    expanded = ExpandedVariants([], [])
    _expand(raw_variants, folder, None, (), {}, expanded)
    return expanded


def _expand(items: list, folder: Path, file: str | None, chain: tuple[tuple[Path, str], ...],
            cache: dict[Path, Any], out: ExpandedVariants) -> None:
    """`chain`: the included files that led here, each as (resolved path, path as shown)."""
    for index, item in enumerate(items):
        if not (isinstance(item, dict) and INCLUDE_KEY in item):
            out.items.append(item)
            out.origins.append(Origin(file, index) if file else None)
            continue
        where = f"variants[{index}].{INCLUDE_KEY}"
        target, problem = _target(item, folder, chain)
        if problem:
            out.issues.append(Issue(where, problem, origin=file or ""))
            continue
        assert target is not None
        resolved = target.resolve()
        if resolved not in cache:
            try:
                cache[resolved] = read_yaml_file(target, missing_hint=f"include paths are relative to the folder of "
                                                                      f"the file that names them ({folder})")
            except ConfigError as error:
                out.issues += [Issue(i.path, i.message, origin=str(target)) for i in error.issues]
                cache[resolved] = error
        content = cache[resolved]
        if isinstance(content, ConfigError):
            continue
        if isinstance(content, dict):
            content = [content]
        if not isinstance(content, list) or not content:
            out.issues.append(Issue("", f"included by {where}{' of ' + file if file else ''}: must hold a non-empty "
                                        "list of variants ({name, model, <model parameters>}), got "
                                        f"{type(content).__name__ if content is not None else 'nothing'}",
                                    origin=str(target)))
            continue
        _expand(content, target.parent, str(target), chain + ((resolved, str(target)),), cache, out)


def _target(item: dict, folder: Path, chain: tuple[tuple[Path, str], ...]) -> tuple[Path | None, str | None]:
    extra = sorted(str(key) for key in item if key != INCLUDE_KEY)
    if extra:
        return None, (f"an include item holds only '{INCLUDE_KEY}', got also {', '.join(extra)}; change an included "
                      "variant with variants.<name>.<key>=value on the command line, or write the variant inline")
    text = item[INCLUDE_KEY]
    if not isinstance(text, str) or not text.strip() or "\x00" in text:
        return None, f"must be the path of a file of variants, e.g. models/xs.yaml, got {shown(text)}"
    target = folder / text
    try:
        resolved, exists = target.resolve(), target.is_file()
    except OSError as error:  # e.g. a name too long for the file system
        return None, f"cannot be read: {target}: {error.strerror or error}"
    included = [path for path, _ in chain]
    if resolved in included:
        names = [as_given for _, as_given in chain[included.index(resolved):]] + [str(target)]
        return None, f"{text!r} includes itself: {' -> '.join(names)}"
    if len(chain) >= MAX_INCLUDE_DEPTH:
        return None, (f"{text!r} is included {len(chain) + 1} files deep; at most {MAX_INCLUDE_DEPTH} levels of "
                      "included files")
    if not exists:
        return None, (f"file not found: {target} (include paths are relative to the folder of the file that names "
                      f"them: {folder})")
    return target, None
