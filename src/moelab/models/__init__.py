"""The models experiment files name (registry.py) and the MoE layer (moe.py); base.py says what a model is."""

from moelab.models.registry import build_model, get_model_spec, model_names, model_params

__all__ = ["build_model", "get_model_spec", "model_names", "model_params"]
