"""`python run/create-plots.py [experiments/<name> ...]`: tables and plots for finished (and running) experiments;
`create-plots A B --compare`: two experiments side by side."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from moelab.report.write import write_report
from moelab.report.compare import print_comparison
from moelab.report.data import UnknownConfiguration
from moelab.results.tree import ExperimentTree


def main(argv: list[str] | None = None, prepare: Callable[[Path], None] | None = None) -> int:
    """`prepare(folder)` runs first for each experiment folder (run/create-plots.py: a search's study
    files, which this package cannot write: it sits below the search)."""
    parser = argparse.ArgumentParser(prog="create-plots.py", description=__doc__)
    parser.add_argument("experiments", nargs="*", type=Path,
                        help="experiment folders (default: every folder under experiments/ that has jobs); "
                             "other folders among them, such as experiments/configs, are skipped with a note")
    parser.add_argument("--configuration", metavar="ID",
                        help="report on this configuration of the folder instead of the last launch's (the ids and "
                             "what differs are on the report's first screen)")
    parser.add_argument("--compare", action="store_true",
                        help="compare two experiment folders A B side by side (paired where runs match by variant, "
                             "seed and grid values, else unpaired); prints the table and saves it (CSV, Markdown) with "
                             "a plot in B's summary folder as compare-<A>.*")
    args = parser.parse_args(argv)
    if args.compare:
        return _compare(args.experiments)
    if args.configuration and len(args.experiments) != 1:
        print("--configuration: name exactly one experiment folder (an id belongs to one folder)", file=sys.stderr)
        return 2
    paths = args.experiments or sorted(p for p in Path("experiments").glob("*") if _is_experiment(p))
    if not paths:
        print("no experiment folders found under experiments/; run an experiment first", file=sys.stderr)
        return 1
    absent = [p for p in paths if not p.exists()]
    if absent:
        print(f"no such folder: {', '.join(map(str, absent))}; check the path", file=sys.stderr)
        return 2
    # `create-plots experiments/*` also names experiments/configs and the like: skip those, unless
    # nothing else is left (then the user named the wrong folder)
    others = [p for p in paths if not _is_experiment(p)]
    paths = [p for p in paths if _is_experiment(p)]
    if not paths:
        print(f"not an experiment folder (no jobs/ inside): {', '.join(map(str, others))}; "
              "name a folder experiments/<name> that a launch wrote", file=sys.stderr)
        return 2
    for other in others:
        print(f"skipped {other}: not an experiment folder (no jobs/ inside)")
    for path in paths if prepare else ():
        prepare(path)
    try:
        write_report(paths, args.configuration)
    except UnknownConfiguration as error:
        print(f"--configuration: {error}", file=sys.stderr)
        return 2
    return 0


def _compare(paths: list[Path]) -> int:
    if len(paths) != 2:
        print(f"--compare: name exactly two experiment folders A B (got {len(paths)})", file=sys.stderr)
        return 2
    not_experiments = [p for p in paths if not _is_experiment(p)]
    if not_experiments:
        print(f"--compare: not an experiment folder (no jobs/ inside): {', '.join(map(str, not_experiments))}",
              file=sys.stderr)
        return 2
    try:
        print_comparison(*paths)
    except ValueError as error:
        print(f"--compare: {error}", file=sys.stderr)
        return 2
    return 0


def _is_experiment(path: Path) -> bool:
    return ExperimentTree(path).jobs_dir.is_dir()


if __name__ == "__main__":
    sys.exit(main())
