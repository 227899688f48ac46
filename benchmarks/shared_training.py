"""The default experiment before and after shared trainings (moe and moe_hard train one network).

    python benchmarks/shared_training.py --before REV [EXPERIMENT_FILE] [key=value ...]

Checks out REV (a commit before the change) into a temporary git worktree, runs run_here from scratch
with its code and then with this checkout's, one after the other in temporary experiments folders, and
prints both wall and CPU times, their ratios, and whether every variant's test results are equal.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLOCK = ("seconds", "latency", "throughput", "device")


def run_here(source: Path, experiment: str, overrides: list[str], folder: Path) -> tuple[float, float]:
    """Wall seconds, and CPU seconds of the launcher and its workers (which other load on the machine
    does not inflate)."""
    env = {**os.environ, "PYTHONPATH": str(source / "src")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "moelab.launch", "run_here", experiment, *overrides,
                    "--experiments-dir", str(folder)], check=True, stdout=subprocess.DEVNULL, env=env, cwd=REPO)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def test_results(folder: Path) -> dict:
    found = {}
    for path in sorted(folder.glob("*/jobs/*/*/results.json")):
        results = json.loads(path.read_text())
        found[f"{path.parent.parent.name}/{path.parent.name}"] = {
            k: v for k, v in results.items() if k.startswith("test_") and not any(w in k for w in CLOCK)}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="a commit before shared trainings")
    parser.add_argument("experiment", nargs="?", default="experiments/configs/default.yaml")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkout = tmp / "before"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(checkout), args.before],
                       check=True, capture_output=True)
        try:
            before = run_here(checkout, args.experiment, args.overrides, tmp / "runs_before")
            after = run_here(REPO, args.experiment, args.overrides, tmp / "runs_after")
            same = test_results(tmp / "runs_before") == test_results(tmp / "runs_after")
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(checkout)], check=True)
    print(f"| code | wall s | CPU s |\n|---|---|---|")
    print(f"| before ({args.before[:10]}) | {before[0]:.1f} | {before[1]:.1f} |\n| after | {after[0]:.1f} | {after[1]:.1f} |")
    print(f"\nafter / before: wall {after[0] / before[0]:.2f}x, CPU {after[1] / before[1]:.2f}x; "
          f"every variant's test results equal: {same}")


if __name__ == "__main__":
    main()
