"""A small declarative schema, shared by the experiment file (config) and model parameters (models):
typed fields with defaults, ranges and choices, checked all at once.

Each check returns `Issue`s (a key path and what is wrong or allowed) instead of raising, so the user
sees every problem in an experiment file in one go.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

REQUIRED = object()
# patterns are matched against the whole value (re.fullmatch): `$` would also accept a trailing newline
PATH_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True)
class Issue:
    path: str
    message: str
    origin: str = ""  # the file the value came from, when it is not the one being checked (an included file)

    def __str__(self) -> str:
        where = self.path
        if self.origin:
            where = f"{self.path} (in {self.origin})" if self.path else self.origin
        return f"{where}: {self.message}" if where else self.message


@dataclass(frozen=True)
class Field:
    """One scalar or list value. `kind` is int, float, str, bool, list or dict."""

    kind: type
    default: Any = REQUIRED
    min: float | None = None
    max: float | None = None
    exclusive_min: bool = False
    choices: tuple | None = None
    nullable: bool = False
    item_kind: type | None = None  # element type for lists
    pattern: re.Pattern | None = None
    help: str = ""
    extra_check: Callable[[Any], str | None] | None = None
    # the version that added the field, when jobs were keyed before it existed: at its default the
    # field is left out of a job's config, and so of its key (`keyed`)
    since: str | None = None

    def describe(self) -> str:
        if self.choices is not None:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        else:
            text = _KIND_WORDS[self.kind]
            if self.kind is list and self.item_kind is not None:
                text += f" of {_KIND_WORDS[self.item_kind]}s"
            if self.min is not None:
                text += f" {'>' if self.exclusive_min else '>='} {self.min}"
            if self.max is not None:
                text += f" <= {self.max}"
            if self.pattern is PATH_SAFE:
                text += " made of letters, digits, '.', '_' and '-' (a safe directory name)"
        if self.nullable:
            text += " or null"
        return text

    def check(self, value: Any, path: str) -> tuple[Any, list[Issue]]:
        if value is None:
            if self.nullable:
                return None, []
            return None, [Issue(path, f"must be {self.describe()}, got null")]
        converted = _convert(self.kind, value)
        if converted is _NOT_FINITE:
            return None, [Issue(path, f"must be {self.describe()}, got {shown(value)}, which is not a finite number")]
        if converted is _INVALID:
            return None, [Issue(path, f"must be {self.describe()}, got {shown(value)} ({_type_name(value)})")]
        value = converted
        if self.kind is list and self.item_kind is not None:
            items = [_convert(self.item_kind, v) for v in value]
            bad = [v for v, c in zip(value, items) if c is _INVALID or c is _NOT_FINITE]
            if bad:
                return None, [Issue(path, f"must be {self.describe()}, got {shown(bad[0])} in the list")]
            value = items
        if self.choices is not None and value not in self.choices:
            return None, [Issue(path, f"must be {self.describe()}, got {shown(value)}{did_you_mean(value, self.choices)}")]
        if self.min is not None and (value < self.min or (self.exclusive_min and value == self.min)):
            return None, [Issue(path, f"must be {self.describe()}, got {shown(value)}")]
        if self.max is not None and value > self.max:
            return None, [Issue(path, f"must be {self.describe()}, got {shown(value)}")]
        if self.pattern is not None and not self.pattern.fullmatch(value):
            return None, [Issue(path, f"must be {self.describe()}, got {shown(value)}")]
        if self.extra_check is not None:
            problem = self.extra_check(value)
            if problem:
                return None, [Issue(path, problem)]
        return value, []


Section = dict  # name -> Field | Section


def check_section(schema: Section, doc: Any, path: str) -> tuple[dict, list[Issue]]:
    """Fill defaults and check every key of `doc` against `schema`, collecting all issues.

    A section that is not a mapping is one issue, and resolves to its defaults, so that later checks
    always receive a complete section."""
    issues: list[Issue] = []
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        return _defaults(schema), [Issue(path, f"must be a mapping of keys to values, got {_type_name(doc)}")]
    resolved: dict = {}
    for key, value in doc.items():
        if key not in schema:
            issues.append(Issue(join(path, shown(key, quote=False)), unknown_key_message(str(key), schema)))
    for key, spec in schema.items():
        sub = join(path, key)
        if isinstance(spec, dict):
            resolved[key], found = check_section(spec, doc.get(key), sub)
            issues += found
        elif key in doc:
            resolved[key], found = spec.check(doc[key], sub)
            issues += found
        elif spec.default is REQUIRED:
            issues.append(Issue(sub, f"is required: {spec.describe()}"))
        else:
            resolved[key] = spec.default
    return resolved, issues


def _defaults(schema: Section) -> dict:
    """Every default of `schema` (required fields, having none, are left out)."""
    return {key: _defaults(spec) if isinstance(spec, dict) else copy.deepcopy(spec.default)
            for key, spec in schema.items() if isinstance(spec, dict) or spec.default is not REQUIRED}


def param(default, help: str = "", **checks) -> dataclasses.Field:
    """A dataclass field with what the schema checks (min, max, choices, nullable, kind, since, ...)."""
    if dataclasses.is_dataclass(default) or isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help, **checks})
    return dataclasses.field(default=default, metadata={"help": help, **checks})


def keyed(schema: Section, values: dict) -> dict:
    """Checked `values` of `schema` as a job's config keeps them: without the fields added later
    (`since`) that are at their default, in nested sections too. So a finished tree keeps its keys, and
    is not retrained, when a later version adds a setting or a model parameter; keys `schema` does not
    know (a variant's name, model, init_from) are kept."""
    kept = {}
    for key, value in values.items():
        spec = schema.get(key)
        if isinstance(spec, dict) and isinstance(value, dict):
            inner = keyed(spec, value)
            if inner or not _all_since(spec):  # a section added later, every field at its default: left out
                kept[key] = inner
        elif not (isinstance(spec, Field) and spec.since is not None and value == spec.default):
            kept[key] = value
    return kept


def _all_since(schema: Section) -> bool:
    return bool(schema) and all(_all_since(spec) if isinstance(spec, dict) else spec.since is not None
                                for spec in schema.values())


def section_from_dataclass(cls: type) -> Section:
    """Turn a settings dataclass (defaults + `param` metadata) into a Section; a field whose default
    is itself a dataclass becomes a nested section."""
    section: Section = {}
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            section[f.name] = section_from_dataclass(type(default))
            continue
        kind = meta.pop("kind") if "kind" in meta else f.type if isinstance(f.type, type) else _KINDS_BY_NAME[str(f.type)]
        section[f.name] = Field(kind=kind, default=default, **meta)
    return section


def from_section(cls: type, values: dict):
    """The dataclass `cls` from checked section values (nested sections become nested dataclasses)."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        value = values[f.name]
        kwargs[f.name] = from_section(type(default), value) if dataclasses.is_dataclass(default) else value
    return cls(**kwargs)


def unknown_key_message(key: str, schema: dict) -> str:
    allowed = ", ".join(schema)
    return f"unknown key{did_you_mean(key, list(schema))}; allowed keys here: {allowed}"


def shown(value: Any, limit: int = 100, quote: bool = True) -> str:
    """A value as messages show it: its repr (or text), shortened, since a file may hold a megabyte in one value."""
    try:
        text = repr(value) if quote else str(value)
    except ValueError:  # an integer of more digits than int-to-text conversion allows
        return f"an integer of about {value.bit_length() * 0.30103:.0f} digits"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def did_you_mean(value: Any, options) -> str:
    close = difflib.get_close_matches(shown(value, limit=200, quote=False), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


_INVALID = object()
_NOT_FINITE = object()  # nan or infinity where a number is wanted: every comparison with them is False
_KIND_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list", dict: "a mapping"}
_KINDS_BY_NAME = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict}


def _convert(kind: type, value: Any) -> Any:
    if kind is bool:
        return value if isinstance(value, bool) else _INVALID
    if kind is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _INVALID
    if kind is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = value
        # PyYAML reads `1e-3` (no dot) as a string; accept what is plainly a number
        elif isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", value.strip()):
            number = value
        if number is None:
            return _INVALID
        try:
            number = float(number)
        except OverflowError:  # an integer too large for a float
            return _NOT_FINITE
        return number if math.isfinite(number) else _NOT_FINITE  # '1e999' converts to inf
    return value if isinstance(value, kind) else _INVALID


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer", float: "a number"}.get(
        type(value), type(value).__name__
    )
