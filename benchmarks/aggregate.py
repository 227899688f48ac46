"""create-plots on a large tree: 10,000 job x variant results made by copying real job outputs.

    python benchmarks/aggregate.py [--runs 10000]

Trains the default experiment once (30 epochs, into a temporary folder), copies its jobs until the
tree holds --runs job x variant results, then measures in fresh processes, after imports: the tables from cold
(no cache), the tables again after 10 jobs changed (with the cache), and the whole report (tables,
plots, HTML). Prints wall time and peak memory of each.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MEASURE = """
import resource, sys, time
from pathlib import Path
from moelab.report.write import write_report, write_tables  # imports (about 1 s) are not counted
started = time.perf_counter()
path = Path(sys.argv[2])
if sys.argv[1] == "aggregate":
    from moelab.report.tables import summarise
    from moelab.results import collect
    found = collect(path, curves=False, cache=sys.argv[3] == "cache")
    summarise(found.runs, found.grid_axes)
elif sys.argv[1] == "tables":
    write_tables(path, cache=sys.argv[3] == "cache")
else:
    write_report([path])
print(time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def measure(what: str, path: Path, cache: str = "nocache") -> tuple[float, float]:
    done = subprocess.run([sys.executable, "-c", MEASURE, what, str(path), cache], capture_output=True, text=True, check=True)
    seconds, peak = done.stdout.strip().splitlines()[-1].split()
    return float(seconds), float(peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        subprocess.run([sys.executable, "-m", "moelab.launch", "run_here", "experiments/configs/default.yaml",
                        "train.epochs=30", "--experiments-dir", str(root / "source"), "--no-report", "--workers", "2"],
                       check=True, stdout=subprocess.DEVNULL)
        source = sorted((root / "source" / "default" / "jobs").iterdir())
        variants = len(json.loads((source[0] / "config.json").read_text())["config"]["variants"])
        tree = root / "big" / "default"
        jobs = tree / "jobs"
        jobs.mkdir(parents=True)
        shutil.copy(root / "source" / "default" / "experiment.yaml", tree)
        count = args.runs // variants
        started = time.perf_counter()
        for i in range(count):
            shutil.copytree(source[i % len(source)], jobs / f"{i:012x}", ignore=shutil.ignore_patterns("weights"))
        print(f"built {count} jobs x {variants} variants = {count * variants} runs in {time.perf_counter() - started:.1f}s")

        rows = [("aggregation (read + summary), cold", *measure("aggregate", tree)),
                ("tables written (csv, md, tex), cold", *measure("tables", tree))]
        measure("tables", tree, "cache")  # fills the cache
        for i in range(10):  # 10 jobs change (as when jobs finish on the cluster)
            status = jobs / f"{i:012x}" / "status.json"
            status.write_text(status.read_text().replace('"attempts": 1', '"attempts": 2'))
        rows.append(("aggregation after 10 jobs changed, cache", *measure("aggregate", tree, "cache")))
        rows.append(("tables written after 10 changed, cache", *measure("tables", tree, "cache")))
        rows.append(("whole report: tables + plots + HTML (cache)", *measure("report", tree)))
    print(f"{'create-plots on ' + str(count * variants) + ' runs':<46} {'seconds':>8} {'peak MiB':>9}")
    for name, seconds, peak in rows:
        print(f"{name:<46} {seconds:>8.2f} {peak:>9.0f}")


if __name__ == "__main__":
    main()
