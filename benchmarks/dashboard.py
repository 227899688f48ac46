"""The dashboard over 10,000 jobs: experiment page first paint and a state filter in Chromium, bytes
sent per update (full page, unchanged, one job changed) and the server's CPU while idle, with no
page open and with the experiment page open (polling every 3 s).

    python benchmarks/dashboard.py [--jobs 10000]

The jobs are synthetic (tests/test_dashboard.py writes them with results/ writers): every fifth
running, every seventh failed, two variants of four epochs each.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_dashboard import add_epoch, write_synthetic_experiment  # noqa: E402
from test_serve import BROWSER_ARGS, chromium_path, free_port  # noqa: E402

from moelab.serve.dashboard import ROWS_TTL_S  # noqa: E402

IDLE_S = 10.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "experiments"
        started = time.perf_counter()
        tree, claims = write_synthetic_experiment(root, "sweep", args.jobs)
        print(f"wrote {args.jobs} jobs in {time.perf_counter() - started:.1f} s")
        port = free_port()
        process = subprocess.Popen([sys.executable, "-m", "moelab.serve", "--experiments-dir", str(root), "--port",
                                    str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            while True:  # until it answers (its first answer reads the whole tree: timed below)
                try:
                    httpx.get(f"{base}/static/style.css", timeout=5)
                    break
                except httpx.TransportError:
                    assert process.poll() is None, "the server exited"
                    time.sleep(0.2)
            api = f"{base}/api/experiments/sweep/job-page"
            started = time.perf_counter()
            full = httpx.get(api, timeout=600)
            print(f"first API answer after the server started (its first pass reads every job's files): "
                  f"{time.perf_counter() - started:.2f} s")
            version = full.json()["version"]
            unchanged = httpx.get(api, params={"since": version}, timeout=600)
            etag = httpx.get(api, headers={"If-None-Match": full.headers["etag"]}, timeout=600)
            add_epoch(tree.job("j00000"), "dense", 1)
            one = httpx.get(api, params={"since": version}, timeout=600)
            while one.json()["version"] == version:  # rows are reread at most every ROWS_TTL_S
                time.sleep(0.5)
                one = httpx.get(api, params={"since": version}, timeout=600)
            print(f"bytes per update (100-job page): full {len(full.content):,}, unchanged {len(unchanged.content):,}"
                  f" (ETag: status {etag.status_code}, {len(etag.content)} bytes), one job changed {len(one.content):,}")
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium_path(), args=BROWSER_ARGS)
                page = browser.new_page(viewport={"width": 1300, "height": 950})
                page.set_default_timeout(600_000)
                time.sleep(ROWS_TTL_S)  # the last pass expired: first paint includes a pass over every job
                started = time.perf_counter()
                page.goto(f"{base}/experiments/sweep")
                page.wait_for_selector("#jobs tr.job")
                print(f"experiment page first paint: {time.perf_counter() - started:.2f} s")
                started = time.perf_counter()
                page.select_option("#filter-state", "failed")
                page.wait_for_function("[...document.querySelectorAll('#jobs .job-state')].every(c => c.dataset.state === 'failed')")
                print(f"state filter (failed): {time.perf_counter() - started:.2f} s")
                before = cpu_seconds(process.pid)
                time.sleep(IDLE_S)  # measuring an interval with the page polling: nothing to wait for
                print(f"server CPU with the experiment page open: {100 * (cpu_seconds(process.pid) - before) / IDLE_S:.1f}%"
                      " of a core")
                browser.close()
            before = cpu_seconds(process.pid)
            time.sleep(IDLE_S)  # measuring an idle interval: nothing to wait for
            print(f"server CPU while idle: {100 * (cpu_seconds(process.pid) - before) / IDLE_S:.1f}% of a core")
        finally:
            process.terminate()
            process.wait()
        for claim in claims:
            claim.release()


if __name__ == "__main__":
    main()
