"""The interface every backend implements: take a launch plan, run or submit its jobs."""

from __future__ import annotations

from abc import ABC, abstractmethod

from moelab.launch.plan import LaunchPlan


class Executor(ABC):
    mode: str  # the launch mode recorded in launches.jsonl

    @abstractmethod
    def launch(self, plan: LaunchPlan) -> int:
        """Run or submit `plan.to_run`, report what happened, and return the process exit code."""
