"""TF Serving's REST JSON bodies: parse requests, format responses.

Shared by the model server's REST API and the gateway's v1 API, so both speak
exactly TF Serving's dialect:

* ``:predict`` takes ``instances`` (row format: a list with one entry per batch
  row, plain values for a single input or ``{name: value}`` objects) or
  ``inputs`` (columnar: a value for a single input or ``{name: value}``).
  The answer mirrors the format: ``predictions`` (rows) or ``outputs``.
* ``:classify`` / ``:regress`` take ``examples`` (feature dicts) and an
  optional ``context``; the answer is ``{"results": ...}``.
* Binary strings travel as ``{"b64": "..."}``; outputs whose name ends in
  ``_bytes`` (or that are not UTF-8) are written that way.
* ``NaN``, ``Infinity`` and ``-Infinity`` are accepted and written as bare
  tokens, as TF Serving does.

Error messages follow TF Serving's wording so clients that match on them keep
working.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from google.protobuf import json_format

from servekit_protocol import tensors
from servekit_protocol.errors import InvalidArgument
from servekit_protocol.messages import (
    DT_STRING,
    ClassificationResult,
    Example,
    Feature,
    GetModelMetadataResponse,
    GetModelStatusResponse,
    Input,
    RegressionResult,
    TensorInfo,
)
from servekit_protocol.metadata import unpack_signature_def_map

DEFAULT_SIGNATURE = "serving_default"
BYTES_SUFFIX = "_bytes"
_DEBUG_LIMIT = 256
_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_NAN = orjson.Fragment(b"NaN")
_INFINITY = orjson.Fragment(b"Infinity")
_MINUS_INFINITY = orjson.Fragment(b"-Infinity")


class RequestFormat(enum.Enum):
    """Which :predict request layout was used; the response mirrors it."""

    ROW = "row"
    COLUMNAR = "columnar"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """What a signature expects of one input.

    Attributes:
        dtype: a dtype name ("float32", "string", "DT_FLOAT"...).
        shape: dimension sizes with -1 for any size (first = batch), or None
            to accept any shape.
    """

    dtype: str
    shape: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class PredictBody:
    """A decoded :predict request."""

    signature_name: str
    inputs: dict[str, np.ndarray[Any, Any]]
    format: RequestFormat


@dataclass(frozen=True, slots=True)
class ExamplesBody:
    """A decoded :classify or :regress request."""

    signature_name: str
    input: Input


SpecSource = Mapping[str, TensorSpec] | Callable[[str], Mapping[str, TensorSpec]]


def specs_from_tensor_infos(infos: Mapping[str, TensorInfo]) -> dict[str, TensorSpec]:
    """TensorSpecs from a SignatureDef's ``inputs`` (unknown shapes accept any)."""
    specs = {}
    for name, info in infos.items():
        shape = (
            tensors.to_shape(info.tensor_shape)
            if info.HasField("tensor_shape")
            else None
        )
        specs[name] = TensorSpec(
            tensors.dtype_name(info.dtype) if info.dtype else "DT_INVALID",
            None if shape is None else tuple(shape),
        )
    return specs


# ---- JSON primitives ---------------------------------------------------------------


def _debug(value: object) -> str:
    try:
        text = orjson.dumps(value, option=_OPTIONS).decode("utf-8", "replace")
    except TypeError:
        text = repr(value)
    if len(text) > _DEBUG_LIMIT:
        return text[:_DEBUG_LIMIT] + "..."
    return text


def _json_type(value: object) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def loads(body: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON, accepting the NaN/Infinity tokens TF Serving allows.

    Raises:
        InvalidArgument: "JSON Parse error: ..." for an empty or malformed body.
    """
    if not body or (isinstance(body, str | bytes | bytearray) and not body.strip()):
        raise InvalidArgument("JSON Parse error: The document is empty")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as fast_error:
        # orjson rejects NaN/Infinity, which TF Serving accepts; the standard
        # parser accepts them, so it gets a second chance on failures only.
        try:
            text = bytes(body).decode("utf-8") if not isinstance(body, str) else body
            return json.loads(text)
        except (UnicodeDecodeError, ValueError):
            raise InvalidArgument(f"JSON Parse error: {fast_error}") from fast_error


def _parse_document(body: bytes | bytearray | memoryview | str) -> dict[str, Any]:
    document = loads(body)
    if not isinstance(document, dict):
        raise InvalidArgument(f"JSON Value: {_debug(document)} Is not object")
    return document


def _signature_name(document: dict[str, Any]) -> str:
    name = document.get("signature_name", DEFAULT_SIGNATURE)
    if not isinstance(name, str):
        raise InvalidArgument(
            f"JSON Value: {_debug(document)} not formatted correctly. "
            "'signature_name' key must be a string value."
        )
    return name or DEFAULT_SIGNATURE


def _is_b64(value: object) -> bool:
    return (
        isinstance(value, dict)
        and len(value) == 1
        and isinstance(value.get("b64"), str)
    )


def _decode_b64(value: dict[str, str]) -> bytes:
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidArgument("Unable to base64 decode") from exc


# ---- values -> arrays ----------------------------------------------------------------


def _dense_shape(value: object) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _check_leaf_level(value: object, shape: list[int], level: int) -> None:
    """A scalar must sit at the innermost level of the tensor's nesting."""
    if level != len(shape):
        raise InvalidArgument(
            f"JSON Value: {_debug(value)} found at incorrect level: {level + 1} "
            f"in the JSON DOM. Expected at level: {len(shape)}"
        )


def _check_list_level(value: list[Any], shape: list[int], level: int) -> None:
    """A list must sit above the innermost level and have that dimension's size."""
    if level >= len(shape):
        raise InvalidArgument(
            f"Encountered list at unexpected level: {level} expected < {len(shape)}"
        )
    if len(value) != shape[level]:
        raise InvalidArgument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} "
            f"expected size: {shape[level]}"
        )


def _flatten_strings(
    value: object, shape: list[int], level: int, out: list[bytes]
) -> None:
    if not isinstance(value, list):
        _check_leaf_level(value, shape, level)
        if isinstance(value, str):
            out.append(value.encode("utf-8"))
        elif _is_b64(value):
            out.append(_decode_b64(value))  # type: ignore[arg-type]
        elif isinstance(value, dict):
            raise InvalidArgument(
                f"JSON Value: {_debug(value)} not formatted correctly for base64 data"
            )
        else:
            raise _type_error(value, "string")
        return
    _check_list_level(value, shape, level)
    for item in value:
        _flatten_strings(item, shape, level + 1, out)


def _type_error(value: object, dtype: str) -> InvalidArgument:
    return InvalidArgument(
        f"JSON Value: {_debug(value)} Type: {_json_type(value)} "
        f"is not of expected type: {dtype}"
    )


def _first_leaf(value: object) -> object:
    while isinstance(value, list) and value:
        value = value[0]
    return value


def _find_bad_leaf(value: object, accept: Callable[[object], bool]) -> object | None:
    if isinstance(value, list):
        for item in value:
            bad = _find_bad_leaf(item, accept)
            if bad is not None:
                return bad
        return None
    return None if accept(value) else value


def _is_json_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_json_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numeric_array(value: object, reader: _Reader) -> np.ndarray[Any, Any]:
    target = reader.target
    try:
        raw = np.asarray(value)
    except ValueError:
        raw = None
    if raw is None or raw.dtype == object:
        # Ragged lists or leaves numpy cannot type: name the problem.
        _check_structure(value, _dense_shape(value), 0)
        raise _type_error(_first_bad(value, target), reader.name)
    found = raw.dtype
    kind = found.kind
    if reader.boolean:
        if kind != "b":
            raise _type_error(_first_bad(value, target), reader.name)
        return raw
    if kind in "USb" or (reader.bounds is not None and kind == "f"):
        raise _type_error(_first_bad(value, target), reader.name)
    if found == target:
        # Values numpy already typed as the target are in its range, and an
        # array numpy built from a list is not shared, so needs no copy.
        return raw if type(value) is list else raw.astype(target)
    if reader.bounds is not None and raw.size:
        minimum, maximum = reader.bounds
        low, high = raw.min(), raw.max()
        if low < minimum or high > maximum:
            raise _type_error((low if low < minimum else high).item(), reader.name)
    return raw.astype(target)


def _leaf_accepts(target: np.dtype[Any]) -> Callable[[object], bool]:
    if target.kind == "b":
        return lambda leaf: isinstance(leaf, bool)
    if target.kind in "iu":
        return _is_json_int
    return _is_json_number


def _first_bad(value: object, target: np.dtype[Any]) -> object:
    bad = _find_bad_leaf(value, _leaf_accepts(target))
    return bad if bad is not None else _first_leaf(value)


def _check_structure(value: object, shape: list[int], level: int) -> None:
    # The structural checks of _flatten_strings, for numeric error messages.
    if not isinstance(value, list):
        _check_leaf_level(value, shape, level)
        return
    _check_list_level(value, shape, level)
    for item in value:
        _check_structure(item, shape, level + 1)


@dataclass(frozen=True, slots=True)
class _Reader:
    """What converting JSON values to one dtype needs, resolved once per dtype."""

    name: str
    target: np.dtype[Any]
    string: bool
    boolean: bool
    # Inclusive range of an integer target; None for other kinds.
    bounds: tuple[int, int] | None

    @classmethod
    def of(cls, dtype: str) -> _Reader:
        target = tensors.numpy_dtype(dtype)
        bounds = None
        if target.kind in "iu":
            info = np.iinfo(target)
            bounds = (int(info.min), int(info.max))
        return cls(
            name=tensors.dtype_name(dtype),
            target=target,
            string=tensors.data_type(dtype) == DT_STRING,
            boolean=target.kind == "b",
            bounds=bounds,
        )


# Every value of every request is converted through its input's dtype; the few
# dtypes signatures name are resolved once. Bounded, as to_array is public.
_READER_CACHE_LIMIT = 256
_READERS: dict[str, _Reader] = {}


def _reader(dtype: str) -> _Reader:
    if type(dtype) is not str:
        return _Reader.of(dtype)
    reader = _READERS.get(dtype)
    if reader is None:
        reader = _Reader.of(dtype)
        if len(_READERS) >= _READER_CACHE_LIMIT:
            _READERS.clear()
        _READERS[dtype] = reader
    return reader


def _string_array(value: object) -> np.ndarray[Any, Any]:
    if type(value) is list and all(type(item) is str for item in value):
        # A column of text, as rows give: flat, so none of the structure
        # checks can fail.
        return np.array([item.encode("utf-8") for item in value], dtype=object)
    shape = _dense_shape(value)
    flat: list[bytes] = []
    _flatten_strings(value, shape, 0, flat)
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array.reshape(shape)


def to_array(value: object, spec: TensorSpec) -> np.ndarray[Any, Any]:
    """Convert one JSON value (scalar or nested lists) to an array of spec.dtype.

    Raises:
        InvalidArgument: the value has the wrong type or a ragged shape.
    """
    reader = _reader(spec.dtype)
    if reader.string:
        return _string_array(value)
    if isinstance(value, dict):
        raise _type_error(value, reader.name)
    return _numeric_array(value, reader)


def _fits(expected: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    # A plain loop: a generator costs more than the check on these few dims.
    if len(expected) != len(shape):
        return False
    for index, want in enumerate(expected):
        if want >= 0 and want != shape[index]:
            return False
    return True


def _check_shape(name: str, array: np.ndarray[Any, Any], spec: TensorSpec) -> None:
    expected = spec.shape
    if expected is None:
        return
    shape = array.shape
    if _fits(expected, shape):
        return
    shown = ",".join(str(size) for size in expected)
    got_text = ",".join(str(size) for size in shape)
    raise InvalidArgument(
        f"Input: {name} has shape [{got_text}] but the signature expects [{shown}] "
        "(-1: any size)"
    )


# ---- :predict ------------------------------------------------------------------------


def _resolve_specs(source: SpecSource, signature_name: str) -> Mapping[str, TensorSpec]:
    specs = source(signature_name) if callable(source) else source
    if not specs:
        raise InvalidArgument(
            f"Failed to get input map for signature: {signature_name or 'DEFAULT'}"
        )
    return specs


def _rows_to_arrays(
    instances: list[Any], specs: Mapping[str, TensorSpec]
) -> dict[str, np.ndarray[Any, Any]]:
    first = instances[0]
    objects = isinstance(first, dict) and not _is_b64(first)
    if not objects and len(specs) > 1:
        raise InvalidArgument(
            "instances is a plain list, but expecting list of objects as multiple "
            "input tensors required as per tensorinfo_map"
        )
    if not objects:
        name, spec = next(iter(specs.items()))
        try:
            return {name: to_array(instances, spec)}
        except InvalidArgument:
            # Rows are only inspected one by one once the batched conversion
            # has failed, which keeps the common path vectorised.
            for index, item in enumerate(instances):
                if isinstance(item, dict) and not _is_b64(item):
                    raise InvalidArgument(
                        f"Expecting value/list but got object at item {index} of "
                        "input list"
                    ) from None
            _explain_row_failure(instances, name, spec, keyed=False)
            raise

    names = set(specs)
    # A row with exactly the signature's keys can be a {"b64": ...} value only
    # when the one input is named b64.
    b64_input = names == {"b64"}
    for index, item in enumerate(instances):
        if (
            type(item) is dict
            and item.keys() == names
            and not (b64_input and _is_b64(item))
        ):
            # Exactly the signature's keys: none of the checks below can fail.
            continue
        if not isinstance(item, dict) or _is_b64(item):
            raise InvalidArgument(
                f"Expecting object but got list at item {index} of input list"
            )
        for key in item:
            if key not in specs:
                raise InvalidArgument(
                    f"Failed to process element: {index} key: {key} of 'instances' "
                    "list. Error: Invalid argument: JSON object: does not have named "
                    f"input: {key}"
                )
        if len(item) != len(names):
            raise InvalidArgument(
                f"Failed to process element: {index} of 'instances' list. "
                f"JSON object: {_debug(item)} keys must be equal to: "
                f"{','.join(sorted(names))}"
            )
    arrays = {}
    for name, spec in specs.items():
        column = [item[name] for item in instances]
        try:
            arrays[name] = to_array(column, spec)
        except InvalidArgument:
            _explain_row_failure(column, name, spec, keyed=True)
            raise
    return arrays


def _explain_row_failure(
    column: list[Any], name: str, spec: TensorSpec, *, keyed: bool
) -> None:
    # The batched conversion failed; convert row by row to name the culprit
    # the way TF Serving does.
    suffix = f" key: {name}" if keyed else ""
    first_shape: tuple[int, ...] | None = None
    first_size = 0
    for index, item in enumerate(column):
        try:
            array = to_array(item, spec)
        except InvalidArgument as exc:
            raise InvalidArgument(
                f"Failed to process element: {index}{suffix} of 'instances' list. "
                f"Error: Invalid argument: {exc.message}"
            ) from exc
        if first_shape is None:
            first_shape, first_size = array.shape, array.size
            continue
        if array.size != first_size:
            detail = f"Expecting tensor size: {first_size} but got: {array.size}"
        elif array.shape != first_shape:
            detail = (
                f"Expecting shape [{','.join(map(str, first_shape))}] but got: "
                f"[{','.join(map(str, array.shape))}]"
            )
        else:
            continue
        raise InvalidArgument(
            f"Failed to process element: {index}{suffix} of 'instances' list. "
            f"Error: Invalid argument: {detail}"
        )


def _columns_to_arrays(
    value: Any, specs: Mapping[str, TensorSpec]
) -> dict[str, np.ndarray[Any, Any]]:
    if not isinstance(value, dict) or _is_b64(value):
        if len(specs) > 1:
            raise InvalidArgument(
                "inputs is a plain value/list, but expecting an object as multiple "
                "input tensors required as per tensorinfo_map"
            )
        name, spec = next(iter(specs.items()))
        return {name: to_array(value, spec)}
    arrays = {}
    for name, spec in specs.items():
        if name not in value:
            raise InvalidArgument(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = to_array(value[name], spec)
    return arrays


def parse_predict_request(
    body: bytes | bytearray | memoryview | str, specs: SpecSource
) -> PredictBody:
    """Decode a :predict body into named arrays.

    Args:
        body: the raw request body.
        specs: the signature's inputs, or a function from signature name
            (``serving_default`` when the body names none) to them; it may raise
            its own errors (e.g. an unknown signature).

    Raises:
        InvalidArgument: malformed JSON, a missing or unknown input, a value of
            the wrong type, ragged rows or a shape the signature rejects.
    """
    document = _parse_document(body)
    signature_name = _signature_name(document)
    has_instances = "instances" in document
    has_inputs = "inputs" in document
    if has_instances and has_inputs:
        raise InvalidArgument(
            f"JSON Value: {_debug(document)} Not formatted correctly expecting only "
            "one of 'inputs' or 'instances' keys to exist "
        )
    if not has_instances and not has_inputs:
        raise InvalidArgument("Missing 'inputs' or 'instances' key")
    input_specs = _resolve_specs(specs, signature_name)
    if has_instances:
        instances = document["instances"]
        if not isinstance(instances, list):
            raise InvalidArgument(
                f"JSON Value: {_debug(document)} Expecting 'instances' to be an "
                "list/array"
            )
        if not instances:
            raise InvalidArgument(
                f"JSON Value: {_debug(document)} No values in 'instances' array"
            )
        arrays = _rows_to_arrays(instances, input_specs)
        request_format = RequestFormat.ROW
    else:
        arrays = _columns_to_arrays(document["inputs"], input_specs)
        request_format = RequestFormat.COLUMNAR
    for name, array in arrays.items():
        _check_shape(name, array, input_specs[name])
    return PredictBody(signature_name, arrays, request_format)


# ---- arrays -> JSON ------------------------------------------------------------------


def _string_leaf(value: object, as_bytes: bool) -> object:
    if isinstance(value, str):
        if as_bytes:
            return {"b64": base64.b64encode(value.encode("utf-8")).decode("ascii")}
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        if not as_bytes:
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                pass
        return {"b64": base64.b64encode(raw).decode("ascii")}
    raise InvalidArgument(
        f"Failed to write JSON value for tensor type: string ({type(value).__name__})"
    )


def _float_leaf(value: np.floating[Any]) -> object:
    if math.isnan(value):
        return _NAN
    if math.isinf(value):
        return _INFINITY if value > 0 else _MINUS_INFINITY
    return value


def to_jsonable(array: np.ndarray[Any, Any], name: str = "") -> Any:
    """An orjson-serializable form of an output array (numpy kept where possible).

    Raises:
        InvalidArgument: a dtype JSON cannot carry (complex, ...).
    """
    kind = array.dtype.kind
    if kind in "OSU":
        as_bytes = name.endswith(BYTES_SUFFIX)
        flat = [_string_leaf(value, as_bytes) for value in array.ravel().tolist()]
        holder = np.empty(len(flat), dtype=object)
        holder[:] = flat
        return holder.reshape(array.shape).tolist()
    if kind == "c":
        raise InvalidArgument(
            f"Failed to write JSON value for tensor type: {tensors.data_type_name(array.dtype)}"
        )
    if kind not in "biuf":
        # bfloat16 and float8 have no JSON writer in orjson; float32 holds them.
        array = array.astype(np.float32)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    # count_nonzero: ndarray.all() costs more than the test on small outputs.
    if array.dtype.kind == "f" and np.count_nonzero(np.isfinite(array)) != array.size:
        holder = np.empty(array.size, dtype=object)
        holder[:] = [_float_leaf(value) for value in array.ravel()]
        return holder.reshape(array.shape).tolist()
    if array.ndim == 0:
        return array[()]
    return np.ascontiguousarray(array)


def dumps(document: Any) -> bytes:
    """Serialize a response document (numpy arrays and scalars allowed)."""
    return orjson.dumps(document, option=_OPTIONS)


def format_predict_response(
    outputs: Mapping[str, np.ndarray[Any, Any]], request_format: RequestFormat
) -> bytes:
    """The :predict answer for outputs, in the request's format.

    Raises:
        InvalidArgument: no outputs, an output without a batch dimension or
            inconsistent batch sizes (row format), or an unwritable dtype.
    """
    if not outputs:
        raise InvalidArgument("Cannot convert empty tensor map to JSON")
    if request_format is RequestFormat.COLUMNAR:
        if len(outputs) == 1:
            ((name, array),) = outputs.items()
            return dumps({"outputs": to_jsonable(np.asarray(array), name)})
        return dumps(
            {
                "outputs": {
                    name: to_jsonable(np.asarray(array), name)
                    for name, array in outputs.items()
                }
            }
        )

    batch_size = -1
    for name, array in outputs.items():
        shape = np.shape(array)
        if not shape:
            raise InvalidArgument(f"Tensor name: {name} has no shape information ")
        if batch_size >= 0 and shape[0] != batch_size:
            raise InvalidArgument(
                f"Tensor name: {name} has inconsistent batch size: {shape[0]} "
                f"expecting: {batch_size}"
            )
        batch_size = shape[0]
    if len(outputs) == 1:
        ((name, array),) = outputs.items()
        return dumps({"predictions": to_jsonable(np.asarray(array), name)})
    columns = {
        name: to_jsonable(np.asarray(array), name) for name, array in outputs.items()
    }
    rows = [
        {name: column[index] for name, column in columns.items()}
        for index in range(batch_size)
    ]
    return dumps({"predictions": rows})


# ---- :classify / :regress ------------------------------------------------------------


def _add_feature_value(value: object, name: str, feature: Feature) -> None:
    kind = feature.WhichOneof("kind")

    def mismatch() -> InvalidArgument:
        shown = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}
        return InvalidArgument(
            f"Unexpected element type in feature: {name} expecting type: "
            f"{shown.get(kind or '', 'UNKNOWN')}"
        )

    if isinstance(value, bool):
        if kind not in (None, "int64_list"):
            raise mismatch()
        feature.int64_list.value.append(int(value))
    elif isinstance(value, str) or _is_b64(value):
        if kind not in (None, "bytes_list"):
            raise mismatch()
        raw = value.encode("utf-8") if isinstance(value, str) else _decode_b64(value)  # type: ignore[arg-type]
        feature.bytes_list.value.append(raw)
    elif isinstance(value, float):
        if kind not in (None, "float_list"):
            raise mismatch()
        feature.float_list.value.append(value)
    elif isinstance(value, int):
        if kind not in (None, "int64_list"):
            raise mismatch()
        if value > 2**63 - 1:
            raise InvalidArgument(
                f"Feature: {name} has uint64_t element. Only int64_t is supported."
            )
        if value < -(2**63):
            raise InvalidArgument(f"Feature: {name} has an integer out of int64 range")
        feature.int64_list.value.append(value)
    else:
        raise InvalidArgument(
            f"Feature: {name} has element with unexpected JSON type: {_json_type(value)}"
        )


def example_from_json(value: object) -> Example:
    """A tf.Example from one JSON feature object, by TF Serving's typing rules.

    Raises:
        InvalidArgument: not an object, or a feature TF Serving would reject.
    """
    if not isinstance(value, dict):
        raise InvalidArgument(
            f"Example must be JSON object but got JSON {_json_type(value)}"
        )
    example = Example()
    feature_map = example.features.feature
    for name, content in value.items():
        feature = Feature()
        for item in content if isinstance(content, list) else [content]:
            _add_feature_value(item, name, feature)
        feature_map[name].CopyFrom(feature)
    return example


def parse_examples_request(
    body: bytes | bytearray | memoryview | str,
) -> ExamplesBody:
    """Decode a :classify or :regress body into an Input of tf.Examples.

    Raises:
        InvalidArgument: malformed JSON, no ``examples`` list, or bad features.
    """
    document = _parse_document(body)
    signature_name = _signature_name(document)
    request_input = Input()
    context = document.get("context")
    has_context = "context" in document
    if has_context:
        request_input.example_list_with_context.context.CopyFrom(
            example_from_json(context)
        )
    if "examples" not in document:
        raise InvalidArgument(
            f"JSON Value: {_debug(document)} When method is classify, key 'examples' "
            "is expected and was not found"
        )
    examples = document["examples"]
    if not isinstance(examples, list):
        raise InvalidArgument(
            f"JSON Value: {_debug(document)} Expecting 'examples' value to be an "
            "list/array"
        )
    if not examples:
        raise InvalidArgument(
            f"JSON Value: {_debug(document)} 'examples' value is an empty array"
        )
    target = (
        request_input.example_list_with_context.examples
        if has_context
        else request_input.example_list.examples
    )
    for item in examples:
        target.append(example_from_json(item))
    return ExamplesBody(signature_name, request_input)


parse_classify_request = parse_examples_request
parse_regress_request = parse_examples_request


def format_classify_response(result: ClassificationResult) -> bytes:
    """``{"results": [[[label, score], ...], ...]}`` for a ClassificationResult.

    Raises:
        InvalidArgument: the result is empty (as in TF Serving).
    """
    if not result.classifications:
        raise InvalidArgument("Cannot convert empty ClassificationResults to JSON")
    results = []
    for classifications in result.classifications:
        labels = [entry.label for entry in classifications.classes]
        scores = to_jsonable(
            np.array([entry.score for entry in classifications.classes], np.float32)
        )
        results.append([[label, scores[index]] for index, label in enumerate(labels)])
    return dumps({"results": results})


def format_regress_response(result: RegressionResult) -> bytes:
    """``{"results": [value, ...]}`` for a RegressionResult.

    Raises:
        InvalidArgument: the result is empty (as in TF Serving).
    """
    if not result.regressions:
        raise InvalidArgument("Cannot convert empty RegressionResults to JSON")
    values = np.array([entry.value for entry in result.regressions], np.float32)
    return dumps({"results": to_jsonable(values)})


# ---- metadata, status, errors --------------------------------------------------------


def _message_dict(message: Any) -> dict[str, Any]:
    result: dict[str, Any] = json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    return result


def format_metadata_response(response: GetModelMetadataResponse) -> bytes:
    """TF Serving's GET .../metadata body: the SignatureDefMap unpacked to JSON."""
    document: dict[str, Any] = {"model_spec": _message_dict(response.model_spec)}
    metadata: dict[str, Any] = {}
    for key, packed in response.metadata.items():
        metadata[key] = _message_dict(unpack_signature_def_map(packed))
    document["metadata"] = metadata
    return dumps(document)


def format_status_response(response: GetModelStatusResponse) -> bytes:
    """TF Serving's GET /v1/models/{m}[/versions/{v}] body.

    A version without a status is shown with TF Serving's OK status, which
    that server always writes.
    """
    if any(not entry.HasField("status") for entry in response.model_version_status):
        complete = GetModelStatusResponse()
        complete.CopyFrom(response)
        for entry in complete.model_version_status:
            entry.status.SetInParent()
        response = complete
    return dumps(_message_dict(response))


def error_body(message: str) -> bytes:
    """TF Serving's error body: ``{"error": message}``."""
    return dumps({"error": message})


__all__ = [
    "BYTES_SUFFIX",
    "DEFAULT_SIGNATURE",
    "ExamplesBody",
    "PredictBody",
    "RequestFormat",
    "SpecSource",
    "TensorSpec",
    "dumps",
    "error_body",
    "example_from_json",
    "format_classify_response",
    "format_metadata_response",
    "format_predict_response",
    "format_regress_response",
    "format_status_response",
    "loads",
    "parse_classify_request",
    "parse_examples_request",
    "parse_predict_request",
    "parse_regress_request",
    "specs_from_tensor_infos",
    "to_array",
    "to_jsonable",
]
