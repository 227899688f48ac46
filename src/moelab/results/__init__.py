"""The experiments tree: paths, crash-safe writes, job states, and loading into DataFrames."""

from moelab.results.load import Collection, collect, load_curves, load_runs
from moelab.results.tree import ExperimentTree, JobTree, VariantTree

__all__ = ["Collection", "ExperimentTree", "JobTree", "VariantTree", "collect", "load_curves", "load_runs"]
