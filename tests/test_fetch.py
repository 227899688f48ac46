"""`fetch`: datasets downloaded with torchvision, checksums verified, from a local HTTP server on
127.0.0.1 serving small files in MNIST's format (never the internet)."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import pickle
import socket
import struct
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torchvision

from conftest import make_job
from moelab.launch.cli import main
from moelab.train.job import run_job

TRAIN_IMAGES, TEST_IMAGES = 200, 60


def idx_files(folder: Path) -> dict[str, str]:
    """MNIST's four gzipped idx files, small (random 28x28 images, labels 0-9 in turn); name -> md5."""
    rng = np.random.default_rng(0)
    checksums = {}
    for prefix, count in (("train", TRAIN_IMAGES), ("t10k", TEST_IMAGES)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = (np.arange(count) % 10).astype(np.uint8)
        for kind, header, body in (("images-idx3", struct.pack(">IIII", 0x803, count, 28, 28), images),
                                   ("labels-idx1", struct.pack(">II", 0x801, count), labels)):
            name = f"{prefix}-{kind}-ubyte.gz"
            data = gzip.compress(header + body.tobytes())
            (folder / name).write_bytes(data)
            checksums[name] = hashlib.md5(data).hexdigest()
    return checksums


@contextlib.contextmanager
def serve(folder: Path):
    """An HTTP server on 127.0.0.1 serving `folder`; yields its URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # a client that hangs up early (torchvision's redirect check reads headers only)

    server = Server(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A local mirror of small MNIST files, with torchvision's checksums set to theirs."""
    served = tmp_path / "served"
    served.mkdir()
    checksums = idx_files(served)
    monkeypatch.setattr(torchvision.datasets.MNIST, "resources",
                        [(name, checksums[name]) for name, _ in torchvision.datasets.MNIST.resources])

    with serve(served) as url:
        yield served, url + "/mnist"


def test_fetched_files_train_with_data_name_mnist(mirror, tmp_path, capsys):
    served, url = mirror
    (served / "mnist").mkdir()
    for file in served.glob("*.gz"):
        file.rename(served / "mnist" / file.name)
    root = tmp_path / "data"
    assert main(["fetch", "mnist", "--root", str(root), "--mirror", url]) == 0
    assert "files verified" in capsys.readouterr().out
    job = make_job(tmp_path / "experiment", ["data.name=mnist", f"data.root={root}",
                                             "variants=[{name: mlp, model: mlp, hidden: 8}]"])
    outcome = run_job(job.path)
    assert outcome.state == "done", outcome.errors


def test_a_corrupted_file_is_refused_by_its_checksum(mirror, tmp_path, capsys):
    served, url = mirror
    damaged = served / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte flipped on the way
    damaged.write_bytes(bytes(data))
    root = tmp_path / "data"
    assert main(["fetch", "mnist", "--root", str(root), "--mirror", url.rsplit("/", 1)[0]]) == 2
    error = capsys.readouterr().err
    assert "t10k-labels-idx1-ubyte.gz" in error and "checksum" in error and "Traceback" not in error
    raw = root / "MNIST" / "raw"
    assert not (raw / damaged.name).exists() and not (raw / "t10k-labels-idx1-ubyte").exists()


def fetch_process(root: Path, mirror: str, *options: str) -> subprocess.CompletedProcess:
    # a deadline, not a guess: a fetch that hung would run into it
    return subprocess.run([sys.executable, "-m", "moelab.launch", "fetch", "mnist", "--root", str(root),
                           "--mirror", mirror, *options], capture_output=True, text=True, timeout=120)


def test_an_unreachable_mirror_exits_2(tmp_path, capsys):
    with socket.socket() as closed:  # a port nobody listens on: bound, never listened
        closed.bind(("127.0.0.1", 0))
        code = main(["fetch", "mnist", "--root", str(tmp_path / "data"), "--mirror",
                     f"http://127.0.0.1:{closed.getsockname()[1]}/"])
    error = capsys.readouterr().err
    assert code == 2 and "Traceback" not in error
    assert "ConnectionRefusedError" in error and "--mirror" in error


def test_a_mirror_that_never_answers_times_out_and_exits_2(tmp_path):
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        done = fetch_process(tmp_path / "data", f"http://127.0.0.1:{silent.getsockname()[1]}/", "--timeout", "1")
    assert done.returncode == 2 and "no answer within the timeout" in done.stderr


def test_cifar10_is_fetched_as_its_archive_and_opened(tmp_path, monkeypatch, capsys):
    """CIFAR-10 comes as one archive extracted into --root; every batch inside has a checksum of its own."""
    cifar = torchvision.datasets.CIFAR10
    served = tmp_path / "served"
    inner = served / "build" / cifar.base_folder
    inner.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = [name for name, _ in cifar.train_list + cifar.test_list]
    for name in batches:
        (inner / name).write_bytes(pickle.dumps({"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
                                                 "labels": [i % 10 for i in range(20)]}))
    (inner / cifar.meta["filename"]).write_bytes(pickle.dumps({cifar.meta["key"]: [str(i) for i in range(10)]}))
    md5 = {path.name: hashlib.md5(path.read_bytes()).hexdigest() for path in inner.iterdir()}
    with tarfile.open(served / cifar.filename, "w:gz") as archive:
        archive.add(inner, arcname=cifar.base_folder)
    monkeypatch.setattr(cifar, "tgz_md5", hashlib.md5((served / cifar.filename).read_bytes()).hexdigest())
    monkeypatch.setattr(cifar, "train_list", [[name, md5[name]] for name, _ in cifar.train_list])
    monkeypatch.setattr(cifar, "test_list", [[name, md5[name]] for name, _ in cifar.test_list])
    monkeypatch.setattr(cifar, "meta", {**cifar.meta, "md5": md5[cifar.meta["filename"]]})

    root = tmp_path / "data"
    with serve(served) as url:
        assert main(["fetch", "cifar10", "--root", str(root), "--mirror", url]) == 0
    assert "files verified" in capsys.readouterr().out
    assert len(cifar(root=str(root), train=True, download=False)) == 5 * 20
