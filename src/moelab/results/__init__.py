"""The experiments tree: paths, crash-safe writes, claims, job states, and loading into DataFrames."""

from moelab.results.tree import ExperimentTree, JobTree, VariantTree

__all__ = ["Collection", "ExperimentTree", "JobTree", "VariantTree", "collect", "load_curves", "load_runs"]


def __getattr__(name: str):
    # loading imports pandas (about a second): launching and training, which only need the tree's
    # names and states, must not pay for it
    if name in ("Collection", "collect", "load_curves", "load_runs"):
        from moelab.results import load

        return getattr(load, name)
    raise AttributeError(f"module 'moelab.results' has no attribute {name!r}")
