"""``:predict`` bodies: row (``instances``) and columnar (``inputs``) requests in,
``predictions`` / ``outputs`` answers out."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from servekit_protocol import tensors
from servekit_protocol.errors import InvalidArgument
from servekit_protocol.json_codec.arrays import (
    TensorSpec,
    check_shape,
    to_array,
    to_jsonable,
)
from servekit_protocol.json_codec.document import (
    debug_text,
    dumps,
    is_b64,
    parse_document,
    read_signature_name,
)
from servekit_protocol.tensor_limits import TensorLimits, json_elements


class RequestFormat(enum.Enum):
    """Which :predict request layout was used; the response mirrors it."""

    ROW = "row"
    COLUMNAR = "columnar"


@dataclass(frozen=True, slots=True)
class PredictBody:
    """A decoded :predict request."""

    signature_name: str
    inputs: dict[str, np.ndarray[Any, Any]]
    format: RequestFormat


SpecSource = Mapping[str, TensorSpec] | Callable[[str], Mapping[str, TensorSpec]]


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
    objects = isinstance(first, dict) and not is_b64(first)
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
                if isinstance(item, dict) and not is_b64(item):
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
            and not (b64_input and is_b64(item))
        ):
            # Exactly the signature's keys: none of the checks below can fail.
            continue
        if not isinstance(item, dict) or is_b64(item):
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
                f"JSON object: {debug_text(item)} keys must be equal to: "
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
    if not isinstance(value, dict) or is_b64(value):
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


def _check_sizes(
    document: dict[str, Any], specs: Mapping[str, TensorSpec], limits: TensorLimits
) -> None:
    # From the nesting alone, before any array exists; ragged values declare
    # by their first row and are refused when converted.
    elements = 0
    size = 0
    if "instances" in document:
        instances = document["instances"]
        first = instances[0]
        if isinstance(first, dict) and not is_b64(first):
            declared = {
                name: len(instances) * json_elements(first.get(name)) for name in specs
            }
        else:
            declared = {next(iter(specs)): json_elements(instances)}
    else:
        value = document["inputs"]
        if isinstance(value, dict) and not is_b64(value):
            declared = {name: json_elements(value.get(name)) for name in specs}
        else:
            declared = {next(iter(specs)): json_elements(value)}
    for name, count in declared.items():
        elements += count
        size += count * _itemsize(specs[name])
    limits.check(elements, size)


def _itemsize(spec: TensorSpec) -> int:
    try:
        return tensors.numpy_dtype(spec.dtype).itemsize
    except InvalidArgument:
        # An unknown dtype is refused when the value is converted.
        return 1


def parse_predict_request(
    body: bytes | bytearray | memoryview | str,
    specs: SpecSource,
    limits: TensorLimits | None = None,
) -> PredictBody:
    """Decode a :predict body into named arrays.

    Args:
        body: the raw request body.
        specs: the signature's inputs, or a function from signature name
            (``serving_default`` when the body names none) to them; it may raise
            its own errors (e.g. an unknown signature).
        limits: the most the request's tensors may hold together, checked
            before any array is built; None for no limit.

    Raises:
        InvalidArgument: malformed JSON, a missing or unknown input, a value of
            the wrong type, ragged rows, a shape the signature rejects, or
            tensors above `limits`.
    """
    document = parse_document(body)
    signature_name = read_signature_name(document)
    has_instances = "instances" in document
    has_inputs = "inputs" in document
    if has_instances and has_inputs:
        raise InvalidArgument(
            f"JSON Value: {debug_text(document)} Not formatted correctly expecting only "
            "one of 'inputs' or 'instances' keys to exist "
        )
    if not has_instances and not has_inputs:
        raise InvalidArgument("Missing 'inputs' or 'instances' key")
    input_specs = _resolve_specs(specs, signature_name)
    if has_instances:
        instances = document["instances"]
        if not isinstance(instances, list):
            raise InvalidArgument(
                f"JSON Value: {debug_text(document)} Expecting 'instances' to be an "
                "list/array"
            )
        if not instances:
            raise InvalidArgument(
                f"JSON Value: {debug_text(document)} No values in 'instances' array"
            )
        if limits is not None:
            _check_sizes(document, input_specs, limits)
        arrays = _rows_to_arrays(instances, input_specs)
        request_format = RequestFormat.ROW
    else:
        if limits is not None:
            _check_sizes(document, input_specs, limits)
        arrays = _columns_to_arrays(document["inputs"], input_specs)
        request_format = RequestFormat.COLUMNAR
    for name, array in arrays.items():
        check_shape(name, array, input_specs[name])
    return PredictBody(signature_name, arrays, request_format)


def output_elements(outputs: Mapping[str, Any]) -> int:
    """Elements of all the outputs together: what writing their JSON costs."""
    return sum(int(np.size(array)) for array in outputs.values())


def format_predict_response(
    outputs: Mapping[str, np.ndarray[Any, Any]], request_format: RequestFormat
) -> bytes:
    """The :predict answer for outputs, in the request's format, outputs in name order.

    Raises:
        InvalidArgument: no outputs, an output without a batch dimension or
            inconsistent batch sizes (row format), or an unwritable dtype.
    """
    if not outputs:
        raise InvalidArgument("Cannot convert empty tensor map to JSON")
    if len(outputs) > 1:
        # Outputs in name order: a SavedModel's come from a protobuf map, which
        # iterates in a different order in every process (TF Serving's too), so
        # two replicas would otherwise write the same answer differently.
        outputs = {name: outputs[name] for name in sorted(outputs)}
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
