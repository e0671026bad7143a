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
import orjson
from servekit_protocol.tensor_limits import TensorLimits

from gateway.clients.arrays import tensor_size
from gateway.codecs.v2_datatypes import NUMPY_TO_V2, V2_TO_NUMPY, v2_datatype
from gateway.codecs.v2_raw import from_raw
from gateway.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """One entry of a request's `outputs`, with the extensions' parameters."""

    name: str
    binary: bool | None = None
    """`binary_data` (binary tensor data extension); None: the request's default."""
    class_count: int = 0
    """`classification` (classification extension); 0: the tensor itself."""


@dataclass
class InferRequest:
    """A parsed v2 inference request."""

    inputs: dict[str, np.ndarray[Any, Any]]
    request_id: str | None = None
    outputs: list[str] | None = None
    """Output names asked for (None: all)."""
    parameters: dict[str, Any] = field(default_factory=dict)
    requested: list[RequestedOutput] = field(default_factory=list)
    """The `outputs` entries with their parameters (empty: all, defaults)."""

    @property
    def binary_by_default(self) -> bool:
        """The request's `binary_data_output` parameter."""
        return self.parameters.get("binary_data_output") is True


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


def _binary_size(spec: dict[str, Any], name: str) -> int | None:
    parameters = spec.get("parameters")
    if parameters is None:
        return None
    if not isinstance(parameters, dict):
        raise InvalidInput(f"input {name!r}: 'parameters' must be an object")
    size = parameters.get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInput(
            f"input {name!r}: binary_data_size must be a non-negative integer"
        )
    return size


class _BinaryReader:
    """The binary part of a request body, handed out in input order."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._offset = 0

    def take(self, size: int, name: str) -> bytes:
        end = self._offset + size
        if end > len(self._data):
            raise InvalidInput(
                f"input {name!r}: binary_data_size {size} runs past the end of the "
                f"body ({len(self._data) - self._offset} binary bytes left)"
            )
        chunk = bytes(self._data[self._offset : end])
        self._offset = end
        return chunk

    def check_consumed(self) -> None:
        left = len(self._data) - self._offset
        if left:
            raise InvalidInput(
                f"the body has {left} binary bytes that no input's binary_data_size "
                f"accounts for"
            )


def _input_array(
    spec: Any,
    wanted: Mapping[str, np.dtype[Any]] | None,
    binary: _BinaryReader | None = None,
) -> tuple[str, np.ndarray[Any, Any]]:
    if not isinstance(spec, dict):
        raise InvalidInput("each entry of 'inputs' must be an object")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput("every input needs a 'name'")
    datatype = spec.get("datatype")
    dtype = V2_TO_NUMPY.get(datatype) if isinstance(datatype, str) else None
    if dtype is None or not isinstance(datatype, str):
        raise InvalidInput(
            f"input {name!r}: unsupported datatype {datatype!r} "
            f"(one of {', '.join(V2_TO_NUMPY)})"
        )
    shape = _shape(spec.get("shape"), name)
    binary_size = _binary_size(spec, name)
    if binary_size is not None:
        if "data" in spec:
            raise InvalidInput(
                f"input {name!r}: give either 'data' or binary_data_size, not both"
            )
        if binary is None:
            raise InvalidInput(
                f"input {name!r}: binary_data_size needs the binary tensor data "
                f"extension (an Inference-Header-Content-Length header)"
            )
        array = from_raw(binary.take(binary_size, name), datatype, shape, name)
        return name, _convert(array, name, wanted)
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
        array = _convert(array, name, wanted)
    expected = math.prod(shape)
    if array.size != expected:
        raise InvalidInput(
            f"input {name!r}: shape {list(shape)} needs {expected} values, "
            f"data has {array.size}"
        )
    return name, array.reshape(shape)


def _convert(
    array: np.ndarray[Any, Any], name: str, wanted: Mapping[str, np.dtype[Any]] | None
) -> np.ndarray[Any, Any]:
    target = wanted.get(name) if wanted is not None else None
    if (
        target is not None
        and target != array.dtype
        and array.dtype.kind in "biuf"
        and target.kind in "biuf"
    ):
        # Clients often send FP32 where the model wants FP64 (or the reverse);
        # converting here saves them a round trip for a dtype error.
        return array.astype(target)
    return array


def _all_integers(data: Any) -> bool:
    if isinstance(data, list):
        return all(_all_integers(item) for item in data)
    return isinstance(data, int)


def _requested_output(item: Any) -> RequestedOutput:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise InvalidInput("each entry of 'outputs' needs a 'name'")
    name: str = item["name"]
    parameters = item.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput(f"output {name!r}: 'parameters' must be an object")
    binary = parameters.get("binary_data")
    if binary is not None and not isinstance(binary, bool):
        raise InvalidInput(f"output {name!r}: binary_data must be true or false")
    class_count = parameters.get("classification", 0)
    if (
        not isinstance(class_count, int)
        or isinstance(class_count, bool)
        or class_count < 0
    ):
        raise InvalidInput(
            f"output {name!r}: classification must be a non-negative integer"
        )
    return RequestedOutput(name, binary, class_count)


def parse_infer_request(
    body: Any,
    wanted: Mapping[str, np.dtype[Any]] | None = None,
    binary: bytes | None = None,
) -> InferRequest:
    """Parse a v2 `/infer` body.

    Args:
        body: the decoded JSON (the header, under the binary extension).
        wanted: the model's input dtypes when known, to convert numeric inputs.
        binary: the bytes after the JSON header under the binary tensor data
            extension (None without it); inputs with `binary_data_size` take
            their data from it, in order, and every byte must be used.

    Raises:
        InvalidInput: anything that does not fit the protocol.
    """
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    raw_inputs = body.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("'inputs' must be a non-empty list")
    reader = _BinaryReader(binary) if binary is not None else None
    inputs: dict[str, np.ndarray[Any, Any]] = {}
    for spec in raw_inputs:
        name, array = _input_array(spec, wanted, reader)
        if name in inputs:
            raise InvalidInput(f"input {name!r} given twice")
        inputs[name] = array
    if reader is not None:
        reader.check_consumed()
    outputs: list[str] | None = None
    requested: list[RequestedOutput] = []
    raw_outputs = body.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise InvalidInput("'outputs' must be a list")
        requested = [_requested_output(item) for item in raw_outputs]
        outputs = [item.name for item in requested]
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be an object")
    return InferRequest(inputs, request_id, outputs, parameters, requested)


def read_document(header: bytes) -> dict[str, Any]:
    """The JSON (header) of an `/infer` body, which must be an object whose
    `parameters`, if any, are an object.

    Raises:
        InvalidInput: not JSON, not an object, or bad `parameters`.
    """
    try:
        document = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"JSON Parse error: {exc}") from exc
    if not isinstance(document, dict):
        raise InvalidInput("the request body must be a JSON object")
    if not isinstance(document.get("parameters") or {}, dict):
        raise InvalidInput("'parameters' must be an object")
    return document


def read_parameters(header: bytes) -> dict[str, Any]:
    """Only the request's `parameters` (where the signature is named).

    Raises:
        InvalidInput: as :func:`read_document`.
    """
    parameters: dict[str, Any] = read_document(header).get("parameters") or {}
    return parameters


def check_tensor_limits(parsed: InferRequest, limits: TensorLimits) -> tuple[int, int]:
    """Refuse a request whose inputs hold more than ``limits``, together; the
    elements and bytes counted (`ArrayRequest.size`).

    Raises:
        InvalidArgument: above the limits.
    """
    # A v2 tensor carries every element it declares (no fill rule), so its size
    # is bounded by the body's; the request-wide cap still applies, as on v1.
    size = tensor_size(parsed.inputs.values())
    limits.check(*size)
    return size


def parse_infer_body(
    header: bytes,
    wanted: Mapping[str, np.dtype[Any]] | None,
    binary: bytes | None,
) -> InferRequest:
    """:func:`parse_infer_request` from the JSON's bytes (run in a worker
    process for a large body: module level, and all of it pickles).

    Raises:
        InvalidInput: anything that does not fit the protocol.
    """
    return parse_infer_request(read_document(header), wanted, binary)


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


__all__ = [
    "NUMPY_TO_V2",
    "V2_TO_NUMPY",
    "InferRequest",
    "RequestedOutput",
    "format_infer_response",
    "format_output",
    "parse_infer_request",
    "tensor_metadata",
    "v2_datatype",
]


def tensor_metadata(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    """One input or output of a v2 model metadata response."""
    return {"name": name, "datatype": datatype, "shape": shape}
