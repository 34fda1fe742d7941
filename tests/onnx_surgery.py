"""Small ONNX surgery for tests: poison a model's weights."""

import numpy as np
from onnx import numpy_helper


def nan_initialisers(model) -> None:
    """Replace every float initialiser of `model` with NaN, in place."""
    for i, tensor in enumerate(model.graph.initializer):
        array = numpy_helper.to_array(tensor)
        if array.dtype.kind == "f" and array.size > 1:
            poisoned = np.full_like(array, np.nan)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(poisoned, tensor.name))
