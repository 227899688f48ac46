"""Launching an experiment: validate, plan the jobs, hand them to a backend (`launcher.py`)."""

from moelab.launch.base import Backend, LaunchOptions, QueueView
from moelab.launch.launcher import launch_experiment

__all__ = ["Backend", "LaunchOptions", "QueueView", "launch_experiment"]
