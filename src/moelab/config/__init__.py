"""Experiment files: schema, validation, command-line overrides and grid expansion."""

from moelab.config.errors import ConfigError
from moelab.config.experiment import Experiment, load_experiment
from moelab.config.grid import Job, job_key

__all__ = ["ConfigError", "Experiment", "Job", "job_key", "load_experiment"]
