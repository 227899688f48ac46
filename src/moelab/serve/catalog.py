"""Which experiments are served, the only way a request's names become paths, and cached reads.

A request names an experiment, a job key, a variant or a summary file; each name must be a safe
name (`schema.PATH_SAFE`: no '/', no '..', not absolute) and must resolve, symlinks followed, to a
path inside the served experiment folder. Everything else is answered with NotFound.

Files are read while jobs write them: a JSON file that cannot be parsed, a torn metrics line or a
missing results.json is reported as a problem of that job, never raised to the page.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Sequence

from moelab.results.errors import DamagedRecord
from moelab.results.io import read_json, read_jsonl
from moelab.results.records import JobSpec, read_job_spec
from moelab.results.tree import ExperimentTree, JobTree
from moelab.schema import PATH_SAFE
from moelab.serve.errors import NotFound


def is_safe_name(name: str) -> bool:
    return isinstance(name, str) and PATH_SAFE.fullmatch(name) is not None


def inside(path: Path, base: Path) -> bool:
    """`path` resolves (symlinks followed) to `base` or below it."""
    try:
        path.resolve(strict=False).relative_to(base.resolve(strict=False))
    except (ValueError, OSError, RuntimeError):  # RuntimeError: a symlink loop
        return False
    return True


class Catalog:
    """The served experiments: every folder of `root` holding a jobs/ folder (looked up again on each
    call, so experiments launched later appear), or exactly the folders given."""

    def __init__(self, root: Path | None = None, experiments: Sequence[Path] = ()):
        if (root is None) == (not experiments):
            raise ValueError("give either an experiments root or experiment folders")
        self.root = Path(root) if root is not None else None
        self.fixed = {Path(p).name: Path(p) for p in experiments}
        self.reads = CachedReads()

    @classmethod
    def from_paths(cls, paths: Sequence[Path], default_root: Path) -> "Catalog":
        """The experiments named on a command line, or every experiment under `default_root`."""
        if not paths:
            return cls(root=default_root)
        paths = [Path(p).resolve() for p in paths]  # "." names the folder it is
        problems = [f"{p}: not an experiment folder (no jobs/ inside)" for p in paths
                    if not ExperimentTree(Path(p)).jobs_dir.is_dir()]
        problems += [f"{p}: the folder name is not a safe name" for p in paths if not is_safe_name(Path(p).name)]
        names = [Path(p).name for p in paths]
        problems += [f"two experiment folders are named {n!r}" for n in sorted(set(names)) if names.count(n) > 1]
        if problems:
            raise ValueError("; ".join(problems))
        return cls(experiments=paths)

    def trees(self) -> dict[str, ExperimentTree]:
        if self.root is None:
            return {name: ExperimentTree(path) for name, path in sorted(self.fixed.items())}
        if not self.root.is_dir():
            return {}
        found = {}
        with os.scandir(self.root) as entries:
            for entry in entries:
                path = Path(entry.path)
                # a folder linked from elsewhere is not part of this tree
                if is_safe_name(entry.name) and inside(path, self.root) and ExperimentTree(path).jobs_dir.is_dir():
                    found[entry.name] = ExperimentTree(path)
        return dict(sorted(found.items()))

    def experiment(self, name: str) -> ExperimentTree:
        if not is_safe_name(name):
            raise NotFound(f"no experiment {name!r}: names are letters, digits, '.', '_' and '-'")
        if self.root is not None:
            tree = ExperimentTree(self.root / name)
            if not (inside(tree.path, self.root) and tree.jobs_dir.is_dir()):
                raise NotFound(f"no experiment {name!r} in {self.root}")
            return tree
        if name not in self.fixed:
            raise NotFound(f"no experiment {name!r}; served: {', '.join(sorted(self.fixed))}")
        return ExperimentTree(self.fixed[name])

    def job(self, tree: ExperimentTree, key: str) -> JobTree:
        if not is_safe_name(key):
            raise NotFound(f"no job {key!r} in experiment {tree.name}: job keys are letters and digits")
        job = tree.job(key)
        if not (job.path.is_dir() and inside(job.path, tree.path)):
            raise NotFound(f"no job {key!r} in experiment {tree.name}")
        return job

    def jobs(self, tree: ExperimentTree) -> list[JobTree]:
        return [tree.job(key) for key in self.job_keys(tree)]

    def job_keys(self, tree: ExperimentTree) -> list[str]:
        """The keys of the jobs whose folders are inside the experiment."""
        if not inside(tree.jobs_dir, tree.path):
            return []
        # below a jobs/ folder inside the experiment only a link can lead out: only links are resolved
        base = str(tree.jobs_dir)
        return [key for key in tree.job_keys() if is_safe_name(key)
                and (not os.path.islink(f"{base}/{key}") or inside(tree.job(key).path, tree.path))]

    def summary_file(self, tree: ExperimentTree, name: str) -> Path:
        """A file written by create-plots (tables and plots), by its name."""
        path = tree.summary_dir / name
        if not is_safe_name(name) or name.startswith(".") or not path.is_file() or not inside(path, tree.path):
            raise NotFound(f"no summary file {name!r} in experiment {tree.name}")
        return path

    def report_file(self, tree: ExperimentTree) -> Path:
        path = tree.report_file
        if not path.is_file() or not inside(path, tree.path):
            raise NotFound(f"experiment {tree.name} has no report yet: run python run/create-plots.py {tree.path}")
        return path


class CachedReads:
    """Parsed files, reread only when their size or modification time changed (every page refresh
    reads every job: a finished job costs one stat per file)."""

    def __init__(self, capacity: int = 20_000):
        self.capacity = capacity
        self.entries: OrderedDict[str, tuple[tuple, Any]] = OrderedDict()
        self.lock = threading.Lock()

    def _cached(self, path: Path, parse: Callable[[Path], Any]) -> Any:
        info = os.stat(path)  # OSError when absent: the caller reports it
        signature = (info.st_mtime_ns, info.st_size, info.st_ino)
        key = str(path)
        with self.lock:
            hit = self.entries.get(key)
            if hit is not None and hit[0] == signature:
                self.entries.move_to_end(key)
                return hit[1]
        value = parse(path)
        with self.lock:
            self.entries[key] = (signature, value)
            self.entries.move_to_end(key)
            while len(self.entries) > self.capacity:
                self.entries.popitem(last=False)
        return value

    def json(self, path: Path) -> Any:
        """Raises OSError, json.JSONDecodeError or UnicodeDecodeError for an absent or damaged file."""
        return self._cached(path, read_json)

    def jsonl(self, path: Path) -> tuple[list[dict], list[int]]:
        """(rows, numbers of the lines that could not be read), e.g. a line being written right now."""

        def parse(p: Path):
            bad: list[int] = []
            rows = read_jsonl(p, on_bad_line=lambda number, _: bad.append(number))
            return [r for r in rows if isinstance(r, dict)], bad

        return self._cached(path, parse)

    def job_spec(self, job: JobTree) -> JobSpec:
        """Raises DamagedRecord naming what is wrong with config.json."""
        spec = read_job_spec(job, read=self.json)
        bad = [name for name in spec.variant_names if not is_safe_name(name)]
        if bad:
            raise DamagedRecord(job.config_file, f"names variants that are not safe names: {bad}",
                                "correct the variant names (letters, digits, '.', '_' and '-')")
        return spec
