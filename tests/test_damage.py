"""Damaged records: whatever a file of the experiments tree holds, nothing crashes, and the damage
costs only what it must."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest

from moelab.results.claims import is_claimed, try_claim
from moelab.results.tree import JobTree

DAMAGED_CLAIMS = {
    "empty": "",
    "truncated": '{"owner": "other", "host": "node-elsewhere", "pi',
    "a JSON list": '["other", "node-elsewhere", 1]',
    "a pid written as a string": json.dumps({"owner": "other", "host": socket.gethostname(), "pid": "1"}),
    "garbage": "\x00\xff garbage",
    "a folder": None,
}


@pytest.mark.parametrize("damage", DAMAGED_CLAIMS)
def test_a_claim_that_cannot_be_read_is_stale_after_the_heartbeat_timeout(tmp_path, monkeypatch, capsys, damage):
    job = JobTree(tmp_path / "jobs" / "k")
    job.path.mkdir(parents=True)
    if DAMAGED_CLAIMS[damage] is None:
        (job.claim_file / "inside").mkdir(parents=True)
    else:
        job.claim_file.write_bytes(DAMAGED_CLAIMS[damage].encode("utf-8", "surrogateescape"))
    monkeypatch.setenv("MOELAB_CLAIM_TIMEOUT_S", "60")
    assert is_claimed(job) and try_claim(job) is None  # perhaps caught half-written: its file is fresh
    old = time.time() - 61
    os.utime(job.claim_file, (old, old))
    assert not is_claimed(job)
    claim = try_claim(job)
    assert claim is not None and json.loads(job.claim_file.read_text())["pid"] == os.getpid()
    assert f"warning: {job.claim_file} could not be read" in capsys.readouterr().err
    claim.release()
    assert not job.claim_file.exists()
