"""Request payloads generated from a model's input schema.

The schema (input names, dtypes, shapes, example rows) comes from the registry
manifest (`servekit.json`) when one is at hand, else from the server's metadata
endpoint. Payloads are random but valid: numbers are drawn within the range the
manifest's examples span, strings are picked among the examples' values (a
one-hot encoder rejects categories it never saw), and every input has its
signature's dtype and shape. A pool of payloads is built once per process and
cycled through, so generating them costs the load generator nothing during the
test.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

DEFAULT_SIGNATURE = "serving_default"
MAX_POOL_SIZE = 32
# Bounds the pool's memory for large tensors (images): about 40 MB of float64.
MAX_POOL_ELEMENTS = 5_000_000

NUMPY_DTYPES: dict[str, npt.DTypeLike] = {
    "float16": np.float16,
    "float32": np.float32,
    "float64": np.float64,
    "int8": np.int8,
    "int16": np.int16,
    "int32": np.int32,
    "int64": np.int64,
    "uint8": np.uint8,
    "uint16": np.uint16,
    "uint32": np.uint32,
    "uint64": np.uint64,
    "bool": np.bool_,
    "string": np.object_,
}
# TensorFlow DataType names, as TF Serving's metadata JSON spells them.
TF_DTYPES = {
    "DT_HALF": "float16",
    "DT_FLOAT": "float32",
    "DT_DOUBLE": "float64",
    "DT_INT8": "int8",
    "DT_INT16": "int16",
    "DT_INT32": "int32",
    "DT_INT64": "int64",
    "DT_UINT8": "uint8",
    "DT_UINT16": "uint16",
    "DT_UINT32": "uint32",
    "DT_UINT64": "uint64",
    "DT_BOOL": "bool",
    "DT_STRING": "string",
}
V2_DATATYPES = {
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "bool": "BOOL",
    "string": "BYTES",
}


class SchemaError(ValueError):
    """The manifest or metadata does not describe inputs payloads can be made for."""


@dataclass(frozen=True)
class InputSpec:
    """One input of the signature: dtype and shape, batch dimension first."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class InputSchema:
    """What a request to one signature must contain."""

    signature: str
    inputs: tuple[InputSpec, ...]
    examples: tuple[Mapping[str, Any], ...]
    source: str
    """Where the schema came from, for logs and the run summary."""


def schema_from_manifest(
    manifest: Mapping[str, Any], signature: str = DEFAULT_SIGNATURE
) -> InputSchema:
    """The schema of a signature from a `servekit.json` manifest (as a dict).

    Raises:
        SchemaError: the manifest lacks the signature or any inputs.
    """
    signatures: Mapping[str, Any] = manifest.get("signatures") or {}
    examples = tuple(manifest.get("examples") or ())
    name = manifest.get("name", "?")
    if signature in signatures:
        raw_inputs: Mapping[str, Any] = signatures[signature].get("inputs") or {}
        inputs = tuple(
            InputSpec(key, str(spec["dtype"]), tuple(int(d) for d in spec["shape"]))
            for key, spec in raw_inputs.items()
        )
    elif not signatures and manifest.get("features"):
        inputs = tuple(
            InputSpec(feature["name"], str(feature["dtype"]), (-1,))
            for feature in manifest["features"]
        )
    else:
        known = ", ".join(sorted(signatures)) or "none"
        raise SchemaError(
            f"model {name!r} has no signature {signature!r} (signatures: {known})"
        )
    if not inputs:
        raise SchemaError(f"signature {signature!r} of model {name!r} has no inputs")
    for spec in inputs:
        if spec.dtype not in NUMPY_DTYPES:
            raise SchemaError(f"input {spec.name!r} has unknown dtype {spec.dtype!r}")
    return InputSchema(signature, inputs, examples, source=f"manifest of {name!r}")


def schema_from_signature_defs(
    signature_defs: Mapping[str, Any], signature: str, source: str
) -> InputSchema:
    """The schema from a SignatureDefMap in TF Serving's JSON form.

    `signature_defs` maps signature names to `{"inputs": {key: {"dtype": "DT_FLOAT",
    "tensor_shape": {"dim": [{"size": "-1"}, ...]}}}}`: the body of
    `GET /v1/models/{m}/metadata` under `metadata.signature_def.signature_def`, and
    the gRPC `GetModelMetadata` answer converted with protobuf's `MessageToDict`.

    Raises:
        SchemaError: the signature is missing or an input has an unusable type.
    """
    if signature not in signature_defs:
        known = ", ".join(sorted(signature_defs)) or "none"
        raise SchemaError(
            f"no signature {signature!r} in metadata (signatures: {known})"
        )
    inputs: list[InputSpec] = []
    for key, info in (signature_defs[signature].get("inputs") or {}).items():
        tf_dtype = str(info.get("dtype", ""))
        if tf_dtype not in TF_DTYPES:
            raise SchemaError(f"input {key!r} has unsupported dtype {tf_dtype!r}")
        tensor_shape = info.get("tensor_shape") or {}
        if tensor_shape.get("unknown_rank"):
            shape: tuple[int, ...] = (-1,)
        else:
            shape = tuple(
                int(dim.get("size", -1)) for dim in tensor_shape.get("dim", ())
            )
        inputs.append(InputSpec(key, TF_DTYPES[tf_dtype], shape))
    if not inputs:
        raise SchemaError(f"signature {signature!r} has no inputs")
    return InputSchema(signature, tuple(inputs), (), source=source)


def schema_from_v1_metadata(
    body: Mapping[str, Any], signature: str = DEFAULT_SIGNATURE
) -> InputSchema:
    """The schema from the body of TF Serving's `GET /v1/models/{m}/metadata`.

    Raises:
        SchemaError: the body is not model metadata or lacks the signature.
    """
    try:
        signature_defs = body["metadata"]["signature_def"]["signature_def"]
    except (KeyError, TypeError) as exc:
        raise SchemaError(
            "metadata has no metadata.signature_def.signature_def"
        ) from exc
    name = (body.get("model_spec") or {}).get("name", "?")
    return schema_from_signature_defs(
        signature_defs, signature, source=f"v1 metadata of {name!r}"
    )


def schema_from_v2_metadata(body: Mapping[str, Any]) -> InputSchema:
    """The schema from the body of the Open Inference Protocol's `GET /v2/models/{m}`.

    Raises:
        SchemaError: an input's datatype is unknown or there are no inputs.
    """
    by_datatype = {datatype: dtype for dtype, datatype in V2_DATATYPES.items()}
    inputs: list[InputSpec] = []
    for entry in body.get("inputs") or ():
        datatype = str(entry.get("datatype", ""))
        if datatype not in by_datatype:
            raise SchemaError(f"input {entry.get('name')!r} has datatype {datatype!r}")
        shape = tuple(int(dim) for dim in entry.get("shape") or (-1,))
        inputs.append(InputSpec(str(entry["name"]), by_datatype[datatype], shape))
    if not inputs:
        raise SchemaError("v2 metadata lists no inputs")
    return InputSchema(
        DEFAULT_SIGNATURE,
        tuple(inputs),
        (),
        source=f"v2 metadata of {body.get('name', '?')!r}",
    )


def _example_values(schema: InputSchema, spec: InputSpec) -> np.ndarray | None:
    """The examples' values of one input stacked as (n, *dims), if they agree."""
    values = [example[spec.name] for example in schema.examples if spec.name in example]
    if not values:
        return None
    try:
        if spec.dtype == "string":
            stacked = np.array(values, dtype=np.object_)
        else:
            stacked = np.array(values, dtype=NUMPY_DTYPES[spec.dtype])
    except (TypeError, ValueError):
        return None
    # Examples given without the per-row dimensions of the signature are unusable.
    if stacked.ndim != max(len(spec.shape), 1):
        return None
    return stacked


def _row_dims(spec: InputSpec, observed: np.ndarray | None) -> tuple[int, ...]:
    dims = list(spec.shape[1:])
    for axis, size in enumerate(dims):
        if size < 0:
            dims[axis] = int(observed.shape[axis + 1]) if observed is not None else 1
    return tuple(dims)


class BatchGenerator:
    """Draws batches of `batch_size` random valid rows for a schema."""

    def __init__(
        self, schema: InputSchema, batch_size: int, rng: np.random.Generator
    ) -> None:
        self.schema = schema
        self.batch_size = batch_size
        self._rng = rng
        self._observed = {
            spec.name: _example_values(schema, spec) for spec in schema.inputs
        }
        self._dims = {
            spec.name: _row_dims(spec, self._observed[spec.name])
            for spec in schema.inputs
        }

    def columns(self) -> dict[str, np.ndarray]:
        """One batch as arrays of shape (batch_size, *dims), keyed by input name."""
        return {spec.name: self._draw(spec) for spec in self.schema.inputs}

    def _draw(self, spec: InputSpec) -> np.ndarray:
        shape = (self.batch_size, *self._dims[spec.name])
        observed = self._observed[spec.name]
        if observed is not None and observed.shape[1:] != shape[1:]:
            observed = None
        dtype = NUMPY_DTYPES[spec.dtype]
        if spec.dtype == "string":
            return self._draw_strings(shape, observed)
        if spec.dtype == "bool":
            return self._rng.integers(0, 2, size=shape).astype(np.bool_)
        if np.issubdtype(dtype, np.integer):
            return self._draw_integers(shape, dtype, observed)
        return self._draw_floats(shape, dtype, observed)

    def _draw_strings(
        self, shape: tuple[int, ...], observed: np.ndarray | None
    ) -> np.ndarray:
        result = np.empty(shape, dtype=np.object_)
        if observed is None:
            letters = np.array(list(string.ascii_lowercase))
            for index in np.ndindex(shape):
                result[index] = "".join(self._rng.choice(letters, size=8))
            return result
        # Each element position takes one of the values seen at that position.
        picks = self._rng.integers(0, observed.shape[0], size=shape)
        for index in np.ndindex(shape):
            value = observed[(picks[index], *index[1:])]
            result[index] = value.decode() if isinstance(value, bytes) else str(value)
        return result

    def _draw_integers(
        self, shape: tuple[int, ...], dtype: npt.DTypeLike, observed: np.ndarray | None
    ) -> np.ndarray:
        if observed is None:
            low = np.zeros(shape[1:], dtype=np.int64)
            high = np.full(shape[1:], 9, dtype=np.int64)
        else:
            low = observed.min(axis=0).astype(np.int64)
            high = observed.max(axis=0).astype(np.int64)
        drawn = self._rng.integers(low, high, size=shape, endpoint=True)
        return drawn.astype(dtype)

    def _draw_floats(
        self, shape: tuple[int, ...], dtype: npt.DTypeLike, observed: np.ndarray | None
    ) -> np.ndarray:
        if observed is None:
            # Non-negative, so log-transformed features stay defined.
            return self._rng.random(size=shape).astype(dtype)
        as_float = observed.astype(np.float64)
        low = as_float.min(axis=0)
        high = as_float.max(axis=0)
        # A single example spans nothing: vary it by 10%, which keeps its sign.
        flat = high <= low
        spread = np.abs(low) * 0.1
        low = np.where(flat, low - spread, low)
        high = np.where(flat, high + spread, high)
        drawn = self._rng.uniform(low, high, size=shape)
        return drawn.astype(dtype)


def to_rows(columns: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """Columns as JSON-ready rows: `[{input: value, ...}, ...]`."""
    names = list(columns)
    as_lists = {name: columns[name].tolist() for name in names}
    batch = len(as_lists[names[0]])
    return [{name: as_lists[name][row] for name in names} for row in range(batch)]


def v1_predict_body(columns: Mapping[str, np.ndarray], signature: str) -> bytes:
    """TF Serving's row format: `{"instances": [{input: value}, ...]}`."""
    body: dict[str, Any] = {"instances": to_rows(columns)}
    if signature != DEFAULT_SIGNATURE:
        body["signature_name"] = signature
    return json.dumps(body).encode()


def v2_infer_body(columns: Mapping[str, np.ndarray], schema: InputSchema) -> bytes:
    """Open Inference Protocol: one flat, row-major tensor per input."""
    dtypes = {spec.name: spec.dtype for spec in schema.inputs}
    inputs = [
        {
            "name": name,
            "shape": list(array.shape),
            "datatype": V2_DATATYPES[dtypes[name]],
            "data": array.reshape(-1).tolist(),
        }
        for name, array in columns.items()
    ]
    return json.dumps({"inputs": inputs}).encode()


def typed_predict_body(columns: Mapping[str, np.ndarray]) -> bytes:
    """The gateway's typed endpoint: `{"instances": [{feature: value}, ...]}`."""
    return json.dumps({"instances": to_rows(columns)}).encode()


def pool_size(schema_elements_per_request: int) -> int:
    """How many distinct payloads to pre-build for requests of this size."""
    per_request = max(schema_elements_per_request, 1)
    return max(1, min(MAX_POOL_SIZE, MAX_POOL_ELEMENTS // per_request))


def build_batches(
    schema: InputSchema, batch_size: int, seed: int | None
) -> list[dict[str, np.ndarray]]:
    """Draw the pool of batches a process cycles through."""
    generator = BatchGenerator(schema, batch_size, np.random.default_rng(seed))
    first = generator.columns()
    elements = sum(int(array.size) for array in first.values())
    return [first, *(generator.columns() for _ in range(pool_size(elements) - 1))]


def describe(schema: InputSchema) -> Sequence[str]:
    """One line per input, for the log."""
    return [f"{spec.name}: {spec.dtype}{list(spec.shape)}" for spec in schema.inputs]
