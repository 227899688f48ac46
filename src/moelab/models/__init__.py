"""Model registry and the MoE layers; see `registry.py` for the interface every model follows."""

from moelab.models.registry import ModelOutput, build_model, count_parameters, get_model_spec, model_names

__all__ = ["ModelOutput", "build_model", "count_parameters", "get_model_spec", "model_names"]
