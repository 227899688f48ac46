"""Crash-safe file primitives for the experiments tree.

Every file a reader may look at is replaced atomically (a temp file in the same directory, then
os.replace), so a reader or a killed writer never sees half a JSON document.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Callable, Iterator


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "w") -> None:
    """Write `path` by calling `write(file)` on a temp file that then replaces it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temp file is created inside the try: an interruption (Ctrl-C) that lands just after the
    # file is created still removes it
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, mode.replace("w", "x")) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def file_signature(path: Path | str) -> tuple[int, int, int] | None:
    """(inode, size, mtime_ns), None when absent: a file replaced (atomic writes make a new inode),
    appended to or rewritten has another one."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


def write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n"
    atomic_write(path, lambda f: f.write(text))


def write_json_if_changed(path: Path, data: Any) -> None:
    """Leave an identical file untouched (its modification time tells readers nothing changed)."""
    try:
        if read_json(path) == data:
            return
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        pass
    write_json(path, data)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def write_jsonl(path: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(r, default=_json_default) + "\n" for r in rows)
    atomic_write(path, lambda f: f.write(text))


def append_jsonl(path: Path, row: dict, sync: bool = True) -> None:
    """Append one line with a single write() call, so a line is either whole or absent. `sync: False`
    for lines that another record can rebuild (a variant's metrics: its checkpoint's history), so
    that the disk's sync stays out of the epoch loop."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(row, default=_json_default) + "\n"
    with open(path, "a") as f:
        f.write(line)
        if sync:
            f.flush()
            os.fsync(f.fileno())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


def read_jsonl(path: Path, on_bad_line: Callable[[int, str], None] | None = None) -> list[dict]:
    """Read a JSON-lines file; a torn or corrupt line is reported to `on_bad_line` and skipped."""
    return list(_iter_jsonl(path, on_bad_line))


def _iter_jsonl(path: Path, on_bad_line) -> Iterator[dict]:
    with open(path, "rb") as f:  # bytes: a line that is not UTF-8 (garbage) is one bad line, not a crash
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line.decode())
            except ValueError:  # JSONDecodeError or UnicodeDecodeError
                if on_bad_line is not None:
                    on_bad_line(number, line.decode(errors="replace"))


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy and torch scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
