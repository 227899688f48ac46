"""What both exports share: the run's name, its identity, and which values are metrics."""

from __future__ import annotations

import hashlib

from moelab.results import events
from moelab.results.finished import FinishedVariant


class MissingExtra(Exception):
    """The tracker's package is not installed."""

    def __init__(self, tracker: str, extra: str, package: str):
        super().__init__(f"export {tracker} needs the {package} package, which is not installed: "
                         f"pip install 'moelab[{extra}]' (or pip install {package}), then run the export again")


def run_name(item: FinishedVariant) -> str:
    """The name TensorBoard shows the run by: variant and grid values."""
    return events.run_name(item.variant, item.spec.grid_values)


def run_id(item: FinishedVariant) -> str:
    """A stable id of the job x variant (hex: every tracker takes it as a run id)."""
    return hashlib.sha256(f"{item.experiment}/{item.job}/{item.variant}".encode()).hexdigest()[:32]


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def epoch_metrics(line: dict) -> dict:
    """An epoch's numbers (the per-expert lists stay in the experiments tree)."""
    return {k: v for k, v in line.items() if k != "epoch" and is_number(v)}


def final_metrics(item: FinishedVariant) -> dict:
    """The numbers of results.json: test metrics, parameter counts, the best epoch, training time."""
    return {k: v for k, v in item.results.scalars().items() if is_number(v)}
