"""`python run/create-plots.py [experiments/<name> ...]`: tables and plots for finished (and running) experiments."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from moelab.report import write_report


def main(argv: list[str] | None = None, prepare: Callable[[Path], None] | None = None) -> int:
    """`prepare(folder)` runs first for each experiment folder (run/create-plots.py: a search's study
    files, which this package cannot write: it sits below the search)."""
    parser = argparse.ArgumentParser(prog="create-plots.py", description=__doc__)
    parser.add_argument("experiments", nargs="*", type=Path,
                        help="experiment folders (default: every folder under experiments/ that has jobs)")
    args = parser.parse_args(argv)
    paths = args.experiments or sorted(p for p in Path("experiments").glob("*") if (p / "jobs").is_dir())
    if not paths:
        print("no experiment folders found under experiments/; run an experiment first", file=sys.stderr)
        return 1
    missing = [p for p in paths if not (p / "jobs").is_dir()]
    if missing:
        print(f"not an experiment folder (no jobs/ inside): {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    for path in paths if prepare else ():
        prepare(path)
    write_report(paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
