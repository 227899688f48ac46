"""Read the YAML that people write (experiment files, model profiles, the site profile, command-line
values) strictly and within limits, so that every problem is a ConfigError naming the file, and the
key where there is one, never a traceback:

- the file's size is checked before it is read (MOELAB_MAX_EXPERIMENT_BYTES)
- it must be UTF-8; a byte that is not is named by line, column and key
- nesting depth and the values YAML aliases (*name) expand to are checked on the event stream before
  anything is built: libyaml builds nested documents recursively, and a deep enough one crashes the
  interpreter; aliases can expand a small file to billions of values
- a key given twice in one mapping is an error naming the key and both lines (PyYAML keeps the later
  one without a word)
- libyaml's C loader parses where it is installed (much faster than the pure Python one)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from moelab.config.errors import ConfigError
from moelab.config.limits import MAX_FILE_BYTES, MAX_NESTING_DEPTH
from moelab.schema import Issue, join, shown

_BASE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"


class DuplicateKeyError(yaml.constructor.ConstructorError):
    def __init__(self, key: Any, first: yaml.Node, second: yaml.Node, mapping: yaml.Node):
        super().__init__(None, None, f"duplicate key {key!r}", second.start_mark)
        self.key = key
        self.places = (f"lines {first.start_mark.line + 1} and {second.start_mark.line + 1}"
                       if first.start_mark.line != second.start_mark.line else
                       f"line {first.start_mark.line + 1}, columns {first.start_mark.column + 1} and "
                       f"{second.start_mark.column + 1}")
        self.mapping_position = (mapping.start_mark.line, mapping.start_mark.column)


class UnreadableValueError(yaml.constructor.ConstructorError):
    """A scalar that its tag (explicit, or implied like a timestamp's) cannot turn into a value."""

    def __init__(self, node: yaml.Node, error: Exception):
        super().__init__(None, None, f"{node.value!r} cannot be read as {node.tag}: {error}", node.start_mark)
        self.position = (node.start_mark.line, node.start_mark.column)


class StrictLoader(_BASE_LOADER):  # type: ignore[misc, valid-type]
    """The safe loader (libyaml's where present) that refuses a key given twice in one mapping, and
    says which value it could not read instead of raising whatever the value's constructor raised."""

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, AttributeError, OverflowError) as error:
            # e.g. `2020-13-45` (a timestamp), `!!int x`, an integer of more than 4300 digits
            raise UnreadableValueError(node, error) from None

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:  # `<<: *base` merges are meant to be overridden
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first is not key_node:
                    raise DuplicateKeyError(key, first, key_node, node)
        return super().construct_mapping(node, deep=deep)


def read_yaml_file(path: Path, missing_hint: str) -> Any:
    """The one YAML document in the file at `path`, checked; ConfigError naming the file otherwise."""
    limit = MAX_FILE_BYTES.value()
    try:
        if not path.is_file():
            raise ConfigError(path, [Issue("", f"file not found; {missing_hint}")])
        size = path.stat().st_size
        if size > limit:
            raise ConfigError(path, [Issue("", f"is {size:,} bytes, more than the limit of {limit:,} bytes for "
                                               "experiment files, model profiles and the site profile; "
                                               f"{MAX_FILE_BYTES.lift_hint()}")])
        with open(path, "rb") as f:
            data = f.read(limit + 1)  # the file may have grown since
    except OSError as error:  # no permission, a name too long for the file system, ...
        raise ConfigError(path, [Issue("", f"cannot be read: {error.strerror or error}")]) from None
    if len(data) > limit:
        raise ConfigError(path, [Issue("", f"is more than the limit of {limit:,} bytes; {MAX_FILE_BYTES.lift_hint()}")])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError(path, [_not_utf8(data, error)]) from None
    return parse_yaml(text, path)


def parse_yaml(text: str, source: str | Path) -> Any:
    """One YAML document from `text`, checked for size, depth, alias expansion and duplicate keys."""
    limit = MAX_FILE_BYTES.value()
    size = len(text.encode("utf-8", "surrogateescape"))
    if size > limit:
        raise ConfigError(source, [Issue("", f"is {size:,} bytes, more than the limit of {limit:,} bytes; "
                                             f"{MAX_FILE_BYTES.lift_hint()}")])
    mapping_paths = _check_structure(text, source, MAX_NESTING_DEPTH.value(), limit)
    try:
        return yaml.load(text, Loader=StrictLoader)
    except DuplicateKeyError as error:
        where = mapping_paths.get(error.mapping_position, "")
        raise ConfigError(source, [Issue(join(where, shown(error.key, quote=False)),
                                         f"duplicate key {shown(error.key)} at {error.places}; YAML would silently "
                                         "keep only the later one: remove one of them")]) from None
    except UnreadableValueError as error:
        line, column = error.position
        raise ConfigError(source, [Issue(_path_at(text, line, column), f"line {line + 1}: {error.problem}")]) from None
    except yaml.YAMLError as error:
        raise ConfigError(source, [Issue("", f"not valid YAML: {error}")]) from None


@dataclass
class _Open:
    """A mapping or list being read, with what the checks need to know about it."""

    is_mapping: bool
    path: str
    anchor: str | None
    height: int = 1  # levels of nesting from here down, aliases expanded
    values: int = 1  # values inside, itself included, aliases expanded
    expecting_key: bool = True
    key: str = "?"
    index: int = 0

    def slot(self) -> str:
        """The key path of the value that comes next."""
        if self.is_mapping:
            return self.path if self.expecting_key else join(self.path, self.key)
        return f"{self.path}[{self.index}]"


def _events(text: str) -> Iterator[tuple[yaml.Event, str, list[_Open]]]:
    """Every parse event with the key path where it sits and the collections open around it. The
    parser is a state machine (no recursion), so this is safe on any nesting."""
    stack: list[_Open] = []
    for event in yaml.parse(text, Loader=_BASE_LOADER):
        slot = stack[-1].slot() if stack else ""
        yield event, slot, stack
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            stack.append(_Open(isinstance(event, yaml.MappingStartEvent), slot, event.anchor))
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            stack.pop()
        if isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent, yaml.MappingEndEvent, yaml.SequenceEndEvent)) and stack:
            parent = stack[-1]
            if parent.is_mapping:
                if parent.expecting_key:
                    parent.key = event.value if isinstance(event, yaml.ScalarEvent) else "?"
                parent.expecting_key = not parent.expecting_key
            else:
                parent.index += 1


def _check_structure(text: str, source: str | Path, max_depth: int, max_values: int) -> dict[tuple[int, int], str]:
    """Refuse nesting deeper than `max_depth` and more than `max_values` values once aliases are
    expanded, before the document is built. Returns the key path of each mapping by its position,
    for the messages of the loader."""
    anchors: dict[str, tuple[int, int]] = {}  # anchor -> (height, values) of what it names
    paths: dict[tuple[int, int], str] = {}

    def too_deep(slot: str, line: int) -> ConfigError:
        return ConfigError(source, [Issue(slot, f"nested more than {max_depth} levels deep (line {line}; an alias "
                                                f"counts as a copy of what it names); {MAX_NESTING_DEPTH.lift_hint()} "
                                                f"(at most {MAX_NESTING_DEPTH.ceiling})")])

    def add(parent: _Open, height: int, values: int, slot: str, line: int) -> None:
        parent.height = max(parent.height, height + 1)
        parent.values += values
        if parent.values > max_values:
            raise ConfigError(source, [Issue(slot, f"the document holds more than {max_values:,} values once its "
                                                   f"aliases (*name) are expanded (line {line}); the limit is one value "
                                                   f"per byte of the size limit: {MAX_FILE_BYTES.lift_hint()}")])

    try:
        for event, slot, stack in _events(text):
            line = event.start_mark.line + 1
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                if len(stack) + 1 > max_depth:  # `stack` does not hold this collection yet
                    raise too_deep(slot, line)
                if isinstance(event, yaml.MappingStartEvent):
                    paths[(event.start_mark.line, event.start_mark.column)] = slot
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                closed = stack[-1]  # popped after this event
                if closed.anchor:
                    anchors[closed.anchor] = (closed.height, closed.values)
                if len(stack) > 1:
                    add(stack[-2], closed.height, closed.values, closed.path, line)
            elif isinstance(event, yaml.ScalarEvent):
                if event.anchor:
                    anchors[event.anchor] = (0, 1)
                if stack:
                    add(stack[-1], 0, 1, slot, line)
            elif isinstance(event, yaml.AliasEvent):
                if any(open_.anchor == event.anchor for open_ in stack):
                    raise ConfigError(source, [Issue(slot, f"the alias *{event.anchor} (line {line}) is inside what it "
                                                           "names: a structure that contains itself has no end")])
                height, values = anchors.get(event.anchor, (0, 1))
                if len(stack) + height > max_depth:
                    raise too_deep(slot, line)
                if stack:
                    add(stack[-1], height, values, slot, line)
    except yaml.YAMLError as error:
        raise ConfigError(source, [Issue("", f"not valid YAML: {error}")]) from None
    return paths


def _not_utf8(data: bytes, error: UnicodeDecodeError) -> Issue:
    before = data[: error.start]
    line = before.count(b"\n")
    column = len(before[before.rfind(b"\n") + 1:].decode("utf-8", "replace"))  # in characters, as editors count
    return Issue(_path_at(data.decode("utf-8", "replace"), line, column),
                 f"the file is not UTF-8 text: byte 0x{data[error.start]:02x} at line {line + 1}, column {column + 1} "
                 "is not UTF-8; save the file as UTF-8")


def _path_at(text: str, line: int, column: int) -> str:
    """The key path of the last value that starts at or before (line, column), 0-based; "" if none."""
    found = ""
    try:
        for event, slot, _ in _events(text):
            if (event.start_mark.line, event.start_mark.column) > (line, column):
                break
            if isinstance(event, yaml.ScalarEvent):
                found = slot
    except yaml.YAMLError:
        pass
    return found
