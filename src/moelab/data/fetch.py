"""`launch_experiment.sh fetch mnist|fashion_mnist|cifar10 [--root data] [--mirror URL] [--timeout S]`.

Downloads a dataset with torchvision into the layout `data.root` is read from, verifying every file
against the checksums torchvision lists, then opens it as training will. A site with its own copy
names it with --mirror (a folder URL holding the same file names). Every connection has a timeout:
without internet the command says so and exits 2 within seconds, never hangs. A file whose checksum
does not match is removed, never left for training to read.
"""

from __future__ import annotations

import argparse
import socket
import sys
import urllib.error
from pathlib import Path

from moelab.data import torchvision_sets
from moelab.data.settings import DataSettings

DEFAULT_TIMEOUT_S = 30.0


class FetchFailed(Exception):
    pass


def sources(name: str, root: Path) -> tuple[list[str], list[tuple[str, str]], Path]:
    """(mirrors, [(file name, md5)], folder the files go to), as torchvision lists them."""
    cls = torchvision_sets._dataset_class(torchvision_sets.CLASSES[name][0])
    if hasattr(cls, "resources"):  # MNIST, FashionMNIST: gzipped files, extracted beside them
        return list(cls.mirrors), [(file, md5) for file, md5 in cls.resources], root / cls.__name__ / "raw"
    base, _, file = cls.url.rpartition("/")  # CIFAR10: one archive, extracted into root
    return [base + "/"], [(file, cls.tgz_md5)], root


def fetch(name: str, root: Path, mirror: str | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> Path:
    """Download, verify and open `name` under `root`; returns the folder its files are in."""
    from torchvision.datasets.utils import download_and_extract_archive

    mirrors, files, folder = sources(name, root)
    if mirror:
        mirrors = [mirror if mirror.endswith("/") else mirror + "/"]
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)  # torchvision opens its connections without one
    try:
        for file, md5 in files:
            problems = []
            for base in mirrors:
                try:
                    download_and_extract_archive(base + file, download_root=str(folder), filename=file, md5=md5)
                    break
                except RuntimeError:  # torchvision: the checksum does not match
                    (folder / file).unlink(missing_ok=True)
                    problems.append(f"{base + file}: its md5 checksum is not the {md5} torchvision expects "
                                    "(a damaged or different file; removed)")
                except (urllib.error.URLError, OSError) as error:  # no route, refused, timed out, HTTP errors
                    (folder / file).unlink(missing_ok=True)
                    problems.append(f"{base + file}: {_reason(error)}")
            else:
                raise FetchFailed(f"could not fetch {file} of {name}:\n  " + "\n  ".join(problems))
    finally:
        socket.setdefaulttimeout(previous)
    problems = torchvision_sets.check(name, DataSettings(name=name, root=str(root)))
    if problems:
        raise FetchFailed(problems[0])
    return folder


def _reason(error: Exception) -> str:
    reason = getattr(error, "reason", error)
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return "no answer within the timeout"
    return f"{type(reason).__name__}: {reason}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="launch_experiment.sh fetch",
                                     description="Download a dataset with torchvision and verify its checksums.")
    parser.add_argument("dataset", choices=sorted(torchvision_sets.CLASSES))
    parser.add_argument("--root", type=Path, default=Path("data"),
                        help="where the files go: the experiment's data.root (default: data)")
    parser.add_argument("--mirror", help="a folder URL holding the same files (your site's copy), instead of "
                                         "torchvision's own addresses")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help=f"seconds a connection may wait for an answer (default {DEFAULT_TIMEOUT_S:g})")
    args = parser.parse_args(argv)
    if args.mirror and not args.mirror.startswith(("http://", "https://")):
        print(f"error: --mirror {args.mirror!r} is not an http:// or https:// URL", file=sys.stderr)
        return 2
    if args.timeout <= 0:
        print("error: --timeout must be above 0 seconds", file=sys.stderr)
        return 2
    try:
        folder = fetch(args.dataset, args.root, args.mirror, args.timeout)
    except FetchFailed as error:
        print(f"error: {error}\nwithout internet here: fetch on a machine with it (a login node) into the same "
              f"--root, name your site's copy with --mirror URL, or put the files in place by hand "
              "(data/README.md)", file=sys.stderr)
        return 2
    print(f"{args.dataset}: files verified in {folder}; train on it with data.name: {args.dataset} and "
          f"data.root: {args.root}")
    return 0
