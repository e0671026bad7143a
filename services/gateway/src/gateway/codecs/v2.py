"""The Open Inference Protocol (KServe/Triton "v2") JSON: requests to arrays and back.

Pure functions over parsed JSON and numpy arrays; the transport and the TF Serving
translation live elsewhere. Tensor data is row-major, flat or nested.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
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


@dataclass
class InferRequest:
    """A parsed v2 inference request."""

    inputs: dict[str, np.ndarray[Any, Any]]
    request_id: str | None = None
    outputs: list[str] | None = None
    """Output names asked for (None: all)."""
    parameters: dict[str, Any] = field(default_factory=dict)


def _shape(raw: Any, name: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(
        isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in raw
    ):
        raise InvalidInput(
            f"input {name!r}: shape must be a list of non-negative integers"
        )
    return tuple(raw)


def _bytes_array(data: Any, name: str) -> np.ndarray[Any, Any]:
    flat: list[bytes] = []

    def collect(value: Any) -> None:
        if isinstance(value, list):
            for item in value:
                collect(item)
        elif isinstance(value, str):
            flat.append(value.encode("utf-8"))
        elif isinstance(value, dict) and isinstance(value.get("b64"), str):
            # TF Serving's binary convention, accepted here too for raw bytes.
            try:
                flat.append(base64.b64decode(value["b64"], validate=True))
            except ValueError as exc:
                raise InvalidInput(f"input {name!r}: invalid base64") from exc
        else:
            raise InvalidInput(f"input {name!r}: BYTES data must be strings")

    collect(data)
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array


def _input_array(
    spec: Any, wanted: Mapping[str, np.dtype[Any]] | None
) -> tuple[str, np.ndarray[Any, Any]]:
    if not isinstance(spec, dict):
        raise InvalidInput("each entry of 'inputs' must be an object")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput("every input needs a 'name'")
    datatype = spec.get("datatype")
    dtype = V2_TO_NUMPY.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise InvalidInput(
            f"input {name!r}: unsupported datatype {datatype!r} "
            f"(one of {', '.join(V2_TO_NUMPY)})"
        )
    shape = _shape(spec.get("shape"), name)
    if "data" not in spec:
        raise InvalidInput(f"input {name!r}: missing 'data'")
    data = spec["data"]
    if dtype.kind == "O":
        array = _bytes_array(data, name)
    else:
        try:
            array = np.asarray(data, dtype=dtype).reshape(-1)
        except (ValueError, TypeError, OverflowError) as exc:
            raise InvalidInput(
                f"input {name!r}: data does not fit datatype {datatype}: {exc}"
            ) from exc
        if dtype.kind in "iu" and not _all_integers(data):
            raise InvalidInput(f"input {name!r}: {datatype} data must be integers")
        target = wanted.get(name) if wanted is not None else None
        if target is not None and target != dtype and target.kind in "biuf":
            # Clients often send FP32 where the model wants FP64 (or the reverse);
            # converting here saves them a round trip for a dtype error.
            array = array.astype(target)
    expected = math.prod(shape)
    if array.size != expected:
        raise InvalidInput(
            f"input {name!r}: shape {list(shape)} needs {expected} values, "
            f"data has {array.size}"
        )
    return name, array.reshape(shape)


def _all_integers(data: Any) -> bool:
    if isinstance(data, list):
        return all(_all_integers(item) for item in data)
    return isinstance(data, int)


def parse_infer_request(
    body: Any, wanted: Mapping[str, np.dtype[Any]] | None = None
) -> InferRequest:
    """Parse a v2 `/infer` body.

    Args:
        body: the decoded JSON.
        wanted: the model's input dtypes when known, to convert numeric inputs.

    Raises:
        InvalidInput: anything that does not fit the protocol.
    """
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    raw_inputs = body.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("'inputs' must be a non-empty list")
    inputs: dict[str, np.ndarray[Any, Any]] = {}
    for spec in raw_inputs:
        name, array = _input_array(spec, wanted)
        if name in inputs:
            raise InvalidInput(f"input {name!r} given twice")
        inputs[name] = array
    outputs: list[str] | None = None
    raw_outputs = body.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise InvalidInput("'outputs' must be a list")
        outputs = []
        for item in raw_outputs:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise InvalidInput("each entry of 'outputs' needs a 'name'")
            outputs.append(item["name"])
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be an object")
    return InferRequest(inputs, request_id, outputs, parameters)


def _json_data(array: np.ndarray[Any, Any]) -> list[Any]:
    flat = array.reshape(-1)
    if flat.dtype.kind in ("O", "S"):
        values: list[Any] = []
        for item in flat.tolist():
            if isinstance(item, bytes):
                try:
                    values.append(item.decode("utf-8"))
                except UnicodeDecodeError:
                    values.append({"b64": base64.b64encode(item).decode("ascii")})
            else:
                values.append(item)
        return values
    if flat.dtype.kind == "U":
        return [str(item) for item in flat.tolist()]
    result: list[Any] = flat.tolist()
    return result


def format_output(name: str, array: np.ndarray[Any, Any]) -> dict[str, Any]:
    """One entry of a response's `outputs`."""
    return {
        "name": name,
        "datatype": v2_datatype(array.dtype),
        "shape": list(array.shape),
        "data": _json_data(array),
    }


def format_infer_response(
    model_name: str,
    model_version: str,
    outputs: Mapping[str, np.ndarray[Any, Any]],
    request_id: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A v2 inference response body."""
    body: dict[str, Any] = {
        "model_name": model_name,
        "model_version": model_version,
        "outputs": [format_output(name, array) for name, array in outputs.items()],
    }
    if request_id is not None:
        body["id"] = request_id
    if parameters:
        body["parameters"] = dict(parameters)
    return body


def tensor_metadata(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    """One input or output of a v2 model metadata response."""
    return {"name": name, "datatype": datatype, "shape": shape}
