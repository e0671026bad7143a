"""The Open Inference Protocol's datatype names and their numpy dtypes."""

from __future__ import annotations

from typing import Any

import numpy as np

from gateway.errors import InvalidInput

V2_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}

NUMPY_TO_V2: dict[str, str] = {
    dtype.str: name for name, dtype in V2_TO_NUMPY.items() if name != "BYTES"
}


def v2_datatype(dtype: np.dtype[Any]) -> str:
    """The v2 datatype name of a numpy dtype (bytes and text are BYTES).

    Raises:
        InvalidInput: no v2 datatype exists for it (e.g. complex numbers).
    """
    if dtype.kind in ("O", "S", "U"):
        return "BYTES"
    name = NUMPY_TO_V2.get(dtype.newbyteorder("=").str)
    if name is None:
        raise InvalidInput(f"the v2 protocol has no datatype for {dtype}")
    return name
