"""`ConfigError`: every problem found in one input file (and its overrides), reported together."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from moelab.schema import Issue


class ConfigError(Exception):
    """Every problem found in one experiment file (and its overrides), reported together."""

    def __init__(self, source: str | Path, issues: list[Issue], overrides: dict[str, str] | None = None):
        self.source, self.issues, self.overrides = str(source), issues, overrides or {}
        super().__init__(str(self))

    def __str__(self) -> str:
        count = f"{len(self.issues)} problem{'s' if len(self.issues) != 1 else ''}"
        lines = [f"error: {self.source}: {count}; nothing was run or written:"]
        for issue in self.issues:
            origin = next((f" (set on the command line: {text})" for path, text in self.overrides.items()
                           if issue.path == path or issue.path.startswith((path + ".", path + "["))), "")
            if origin:  # the value came from the command line, not from the file it would otherwise name
                issue = dataclasses.replace(issue, origin="")
            lines.append(f"  - {issue}{origin}")
        return "\n".join(lines)
