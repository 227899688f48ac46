"""The table of backends, by command-line mode. A backend is imported only when used: submitting
needs submitit, running here does not."""

from __future__ import annotations

import importlib

from moelab.launch.base import Backend

BACKENDS = {
    "run_here": "moelab.launch.local.backend:LocalBackend",
    "submit": "moelab.launch.slurm.backend:SlurmBackend",
}


def backend_class(mode: str) -> type[Backend]:
    module, _, name = BACKENDS[mode].partition(":")
    return getattr(importlib.import_module(module), name)
