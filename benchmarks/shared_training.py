"""The default experiment before and after shared trainings (moe and moe_hard train one network).

    python benchmarks/shared_training.py --before REV [EXPERIMENT_FILE] [key=value ...]

Checks out REV (a commit before the change) into a temporary git worktree, runs run_here from scratch
with its code and then with this checkout's, one after the other in temporary experiments folders, and
prints both wall times, their ratio, and whether every variant's test results are equal.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLOCK = ("seconds", "latency", "throughput", "device")


def run_here(source: Path, experiment: str, overrides: list[str], folder: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(source / "src")}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "moelab.launch", "run_here", experiment, *overrides,
                    "--experiments-dir", str(folder)], check=True, stdout=subprocess.DEVNULL, env=env, cwd=REPO)
    return time.perf_counter() - started


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
    print(f"| code | wall s |\n|---|---|\n| before ({args.before[:10]}) | {before:.1f} |\n| after | {after:.1f} |")
    print(f"\nafter / before: {after / before:.2f}x; every variant's test results equal: {same}")


if __name__ == "__main__":
    main()
