"""How large a variant's model will be, estimated before anything is built: its parameter count
(from the params dataclass, models/params.py) on the dataset's input and output sizes, and the memory
its training state needs. A model above MOELAB_MAX_MODEL_PARAMETERS is refused at validation.
"""

from __future__ import annotations

from typing import Callable

from moelab.config.limits import MAX_MODEL_PARAMETERS, count_text
from moelab.models import get_model_spec

# dataset -> (inputs per sample, outputs, image shape behind the flat input or None), as each loader in
# data/ gives them; tests/test_config.py checks that every dataset has a row and compares the ones it
# can load
DIMENSIONS: dict[str, Callable[[dict], tuple[int, int, tuple[int, ...] | None]]] = {
    "digits": lambda data: (64, 10, (8, 8)),
    "mnist": lambda data: (784, 10, (28, 28)),
    "fashion_mnist": lambda data: (784, 10, (28, 28)),
    "cifar10": lambda data: (3072, 10, (3, 32, 32)),
    # (x, y) plus a sine and a cosine of both per Fourier band -> RGB
    "image_fit": lambda data: (2 + 4 * data["fourier_features"], 3, None),
}

# float32 weights, their gradients and the two moments of Adam/AdamW
TRAINING_BYTES_PER_PARAMETER = 16


def dataset_dimensions(data: dict) -> tuple[int, int, tuple[int, ...] | None] | None:
    dimensions = DIMENSIONS.get(data["name"])
    return dimensions(data) if dimensions else None


def model_size_problem(model: str, params: dict, data: dict) -> str | None:
    """Why a model of these parameters is too large to train on this data, or None."""
    dimensions = dataset_dimensions(data)
    if dimensions is None:
        return None
    count = get_model_spec(model).params(**params).parameter_count(*dimensions)
    limit = MAX_MODEL_PARAMETERS.value()
    if count <= limit:
        return None
    return (f"model {model!r} would have {count_text(count)} parameters on {data['name']} ({dimensions[0]} inputs, "
            f"{dimensions[1]} outputs), {_bytes(count * TRAINING_BYTES_PER_PARAMETER)} of float32 weights, gradients "
            f"and Adam state before any activations; the limit is {limit:,} parameters: make it smaller, or "
            f"{MAX_MODEL_PARAMETERS.lift_hint()}")


def _bytes(count: int) -> str:
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6)):
        if count >= size:
            return f"about {count_text(count // size)} {unit}"
    return f"{count:,} bytes"
