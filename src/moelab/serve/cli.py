"""`serve`: the dashboard and prediction web app on this machine.

    bash run/launch_experiment.sh serve [experiments/<name> ...] [--port N] [--host H]
    python -m moelab.serve [experiments/<name> ...] [--experiments-dir DIR] [--port N] [--host H]

Without experiment folders, every folder of the experiments directory that holds a jobs/ folder is
served, experiments launched later included.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from moelab.serve.app import DEFAULT_MAX_BODY

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="launch_experiment.sh serve",
        description="Dashboard of experiments (job states, live learning curves, errors, report) and a "
                    "prediction page and API for the trained variants. Reads the experiments tree only.")
    parser.add_argument("experiments", nargs="*", type=Path, metavar="EXPERIMENT_DIR",
                        help="experiment folders to serve (default: every one in --experiments-dir)")
    parser.add_argument("--experiments-dir", type=Path, default=Path("experiments"),
                        help="where experiment folders are (default: experiments)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--max-body-mb", type=float, default=DEFAULT_MAX_BODY / 2**20,
                        help=f"largest request body accepted, in MiB (default {DEFAULT_MAX_BODY // 2**20})")
    parser.add_argument("--no-queue", action="store_true",
                        help="do not ask cluster queues (sacct) about submitted jobs: states from the disk only")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error("--port must be between 1 and 65535")
    if args.max_body_mb <= 0:
        parser.error("--max-body-mb must be > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import uvicorn

    from moelab.serve.app import create_app
    from moelab.serve.catalog import Catalog

    try:
        catalog = Catalog.from_paths(args.experiments, args.experiments_dir)
    except ValueError as error:
        print(f"serve: {error}", file=sys.stderr)
        return 2
    names = list(catalog.trees())
    where = ", ".join(names) if args.experiments else f"{len(names)} experiment(s) in {args.experiments_dir}/ (new ones appear)"
    print(f"serving {where}")
    if args.host not in LOOPBACK:
        print(f"note: listening on {args.host}: anyone who can reach this address sees the experiments and can "
              f"query the models", file=sys.stderr)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"dashboard: http://{host}:{args.port}/   predictions: http://{host}:{args.port}/predict   (Ctrl-C stops)",
          flush=True)
    app = create_app(catalog, max_body_bytes=int(args.max_body_mb * 2**20), ask_queues=not args.no_queue)
    # the first pass over a large tree reads every job's files (seconds for thousands): begun now, a
    # page that asks meanwhile waits for it and shares it (Dashboard.job_rows) instead of starting over
    threading.Thread(target=app.state.dashboard.experiments, name="first-pass", daemon=True).start()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
