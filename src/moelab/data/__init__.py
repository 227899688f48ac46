"""Dataset registry and the built-in datasets (digits, mnist, fashion_mnist, cifar10, image_fit)."""

from moelab.data.registry import CLASSIFICATION, REGRESSION, TaskData, dataset_names, get_dataset_spec, load_dataset

__all__ = ["CLASSIFICATION", "REGRESSION", "TaskData", "dataset_names", "get_dataset_spec", "load_dataset"]
