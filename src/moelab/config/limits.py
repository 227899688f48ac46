"""Limits on the size of what an experiment asks for, so that a mistake (a pasted 50 MB list, a grid
of a billion points, a model of a trillion parameters) is refused in a second, before anything is
parsed at length, expanded, written or trained. Each is lifted with an environment variable.

    MOELAB_MAX_EXPERIMENT_BYTES   1,000,000      bytes of an experiment file, an included model
                                                 profile, the site profile or a command-line value;
                                                 also the values a file may hold once its YAML
                                                 aliases (*name) are expanded
    MOELAB_MAX_NESTING_DEPTH      32 (<= 100)    mappings and lists inside each other
    MOELAB_MAX_GRID_JOBS          100,000        jobs of a grid (the product of its axis lengths)
    MOELAB_MAX_MODEL_PARAMETERS   2,000,000,000  parameters of one model, estimated before training
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from moelab.config.errors import ConfigError
from moelab.schema import Issue


@dataclass(frozen=True)
class Limit:
    env: str
    default: int
    ceiling: int | None = None  # a value above it cannot be asked for (deeper nesting overflows the stack)

    def value(self) -> int:
        text = os.environ.get(self.env, "").strip()
        if not text:
            return self.default
        number = _whole_number(text)
        if number is None or number < 1 or (self.ceiling is not None and number > self.ceiling):
            most = f" and at most {self.ceiling:,}" if self.ceiling is not None else ""
            raise ConfigError(f"environment variable {self.env}",
                              [Issue("", f"must be a whole number >= 1{most}, got {text!r}")])
        return number

    def lift_hint(self) -> str:
        return f"lift it with the environment variable {self.env}=N"


MAX_FILE_BYTES = Limit("MOELAB_MAX_EXPERIMENT_BYTES", 1_000_000)
MAX_NESTING_DEPTH = Limit("MOELAB_MAX_NESTING_DEPTH", 32, ceiling=100)
MAX_GRID_JOBS = Limit("MOELAB_MAX_GRID_JOBS", 100_000)
MAX_MODEL_PARAMETERS = Limit("MOELAB_MAX_MODEL_PARAMETERS", 2_000_000_000)


def count_text(count: int) -> str:
    """A count for a message; an astronomically large one has more digits than int-to-text allows."""
    return f"{count:,}" if count < 10**15 else f"about 10^{math.log10(count):.1f}"


def _whole_number(text: str) -> int | None:
    try:
        return int(text.replace("_", "").replace(",", ""))
    except ValueError:
        pass
    try:
        number = float(text)  # 2e9
    except ValueError:
        return None
    return int(number) if math.isfinite(number) and number == int(number) else None
