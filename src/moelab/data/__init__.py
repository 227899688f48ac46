"""The datasets experiment files name (registry.py), their settings, and their tensors (task_data.py)."""

from moelab.data.registry import (CLASSIFICATION, LANGUAGE_MODELING, REGRESSION, dataset_dimensions, dataset_keys, dataset_names,
                                  get_dataset_spec, load_dataset)
from moelab.data.settings import DataSettings

__all__ = ["CLASSIFICATION", "LANGUAGE_MODELING", "REGRESSION", "DataSettings", "dataset_dimensions", "dataset_keys", "dataset_names",
           "get_dataset_spec", "load_dataset"]
