"""Launching an experiment: plan the jobs, then hand them to a backend (see `cli.py`)."""

from moelab.launch.base import Executor
from moelab.launch.local.executor import LocalExecutor
from moelab.launch.plan import LaunchPlan, make_plan, write_plan

__all__ = ["Executor", "LaunchPlan", "LocalExecutor", "make_plan", "write_plan"]
