"""How large a variant's model will be, estimated before anything is built: its parameter count
(from the params dataclass, models/params.py) on the dataset's input and output sizes, and the memory
its training state needs. A model above MOELAB_MAX_MODEL_PARAMETERS is refused at validation.
"""

from __future__ import annotations

from moelab.config.limits import MAX_MODEL_PARAMETERS, count_text
from moelab.data import dataset_dimensions, get_dataset_spec
from moelab.models import get_model_spec

# float32 weights, their gradients and the two moments of Adam/AdamW
TRAINING_BYTES_PER_PARAMETER = 16


def model_size_problem(model: str, params: dict, data: dict) -> str | None:
    """Why a model of these parameters is too large to train on this data, or None."""
    d_in, d_out = dataset_dimensions(data)
    count = get_model_spec(model).parameter_counts(d_in, d_out, params, get_dataset_spec(data["name"]).input_shape).total
    limit = MAX_MODEL_PARAMETERS.value()
    if count <= limit:
        return None
    return (f"model {model!r} would have {count_text(count)} parameters on {data['name']} ({d_in} inputs, "
            f"{d_out} outputs), {_bytes(count * TRAINING_BYTES_PER_PARAMETER)} of float32 weights, gradients "
            f"and Adam state before any activations; the limit is {limit:,} parameters: make it smaller, or "
            f"{MAX_MODEL_PARAMETERS.lift_hint()}")


def _bytes(count: int) -> str:
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6)):
        if count >= size:
            return f"about {count_text(count // size)} {unit}"
    return f"{count:,} bytes"
