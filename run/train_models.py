"""Run one job of an experiment by hand: python run/train_models.py experiments/<name>/jobs/<key> [--force]

The launchers call the same function; use this to rerun or debug a single grid point.
"""

import argparse
import sys

from moelab.train.job import run_job

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("job_dir", help="a job folder (holds config.json)")
parser.add_argument("--force", action="store_true", help="discard the job's earlier outputs first")
args = parser.parse_args()
outcome = run_job(args.job_dir, fresh=args.force)
print(f"{outcome.key}: {outcome.state} in {outcome.seconds:.1f}s")
for name, error in outcome.errors.items():
    print(f"  {name}: {error}")
sys.exit(0 if outcome.state == "done" else 1)
