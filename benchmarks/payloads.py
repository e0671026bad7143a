"""Request bodies for every API, built from one example row of a registry manifest.

Every system gets the same single row: the TF Serving REST body (``instances``) for
the servekit model server, the gateway and the plain FastAPI app; a serialized
``PredictRequest`` for gRPC; the Open Inference Protocol (V2) body for MLServer's
REST API. MLServer's gRPC request is built from that V2 body by its own classes
(see ``benchmarks/mlserver_requests.py``). The gateway's Open Inference Protocol
rows send the row as tritonclient does: binary tensors after a JSON header over
HTTP, and a ``ModelInferRequest`` with ``raw_input_contents`` over gRPC.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from modelregistry import Manifest, Registry

SIGNATURE = "serving_default"

_V2_DATATYPES = {
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


class PayloadError(Exception):
    """The registry has no usable model or example row for a benchmark."""


@dataclass(frozen=True)
class ModelPayloads:
    """One model's version on disk and the request files for it."""

    name: str
    framework: str
    version: int
    version_dir: Path
    row: dict[str, Any]
    input_dtypes: dict[str, str]
    tfs_rest: Path
    tfs_grpc: Path
    v2_rest: Path
    v2_binary: Path
    """The binary tensor data extension's body: JSON header, then raw tensors."""
    v2_binary_header: int
    """The JSON header's length (the Inference-Header-Content-Length header)."""
    v2_grpc: Path
    """A serialized OIP ``ModelInferRequest`` with raw input contents."""


def _complete(row: dict[str, Any]) -> bool:
    def present(value: Any) -> bool:
        if value is None:
            return False
        if isinstance(value, float):
            return not math.isnan(value)
        if isinstance(value, list):
            return all(present(item) for item in value)
        return True

    return all(present(value) for value in row.values())


def input_dtypes(manifest: Manifest) -> dict[str, str]:
    """Input names and dtypes of the default signature (the features for sklearn).

    Raises:
        PayloadError: The manifest names no inputs.
    """
    signature = manifest.signatures.get(SIGNATURE)
    if signature is not None and signature.inputs:
        return {name: spec.dtype for name, spec in signature.inputs.items()}
    if manifest.features:
        return {feature.name: feature.dtype for feature in manifest.features}
    raise PayloadError(f"{manifest.name}: the manifest names no inputs")


def example_row(manifest: Manifest) -> dict[str, Any]:
    """The first example row without missing values.

    Raises:
        PayloadError: No complete example row in the manifest.
    """
    names = input_dtypes(manifest)
    for example in manifest.examples:
        row = {name: example.get(name) for name in names}
        if _complete(row):
            return row
    raise PayloadError(f"{manifest.name}: no example row without missing values")


def batch_array(values: list[Any], dtype: str) -> np.ndarray[Any, Any]:
    """Stack per-row values of one input into a batch with the manifest's dtype."""
    if dtype == "string":
        return np.asarray(
            [value.encode() if isinstance(value, str) else value for value in values],
            dtype=object,
        )
    return np.asarray(values, dtype=np.dtype(dtype))


def predict_request_bytes(
    model: str, row: dict[str, Any], dtypes: dict[str, str]
) -> bytes:
    """A serialized TF Serving ``PredictRequest`` with one row."""
    from servekit_protocol.messages import PredictRequest
    from servekit_protocol.tensors import from_ndarray

    request = PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = SIGNATURE
    for name, value in row.items():
        request.inputs[name].CopyFrom(
            from_ndarray(batch_array([value], dtypes[name]), packed=True)
        )
    return request.SerializeToString()


def v2_body(row: dict[str, Any], dtypes: dict[str, str]) -> dict[str, Any]:
    """An Open Inference Protocol request: one input per feature, as a DataFrame.

    The request-level ``content_type: pd`` makes MLServer decode the inputs into a
    pandas DataFrame, the way a ColumnTransformer pipeline needs them; string
    columns say ``content_type: str`` so they arrive as ``str``, not bytes.
    """
    inputs = []
    for name, value in row.items():
        dtype = dtypes[name]
        data = value if isinstance(value, list) else [value]
        shape = list(np.asarray([value]).shape) if dtype != "string" else [1]
        tensor: dict[str, Any] = {
            "name": name,
            "datatype": _V2_DATATYPES[dtype],
            "shape": shape,
            "data": data,
        }
        if dtype == "string":
            tensor["parameters"] = {"content_type": "str"}
        inputs.append(tensor)
    return {"parameters": {"content_type": "pd"}, "inputs": inputs}


def _raw_tensor(array: np.ndarray[Any, Any]) -> bytes:
    # BYTES elements are length-prefixed; numbers are little-endian.
    if array.dtype.kind == "O":
        return b"".join(
            len(item).to_bytes(4, "little") + item for item in array.reshape(-1)
        )
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _row_tensors(
    row: dict[str, Any], dtypes: dict[str, str]
) -> list[tuple[str, str, list[int], bytes]]:
    tensors = []
    for name, value in row.items():
        array = batch_array([value], dtypes[name])
        datatype = _V2_DATATYPES[dtypes[name]]
        tensors.append((name, datatype, list(array.shape), _raw_tensor(array)))
    return tensors


def v2_binary_body(row: dict[str, Any], dtypes: dict[str, str]) -> tuple[bytes, int]:
    """An OIP request in the binary tensor data extension, and its JSON's length."""
    tensors = _row_tensors(row, dtypes)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": shape,
                    "parameters": {"binary_data_size": len(raw)},
                }
                for name, datatype, shape, raw in tensors
            ]
        }
    ).encode()
    return header + b"".join(raw for *_, raw in tensors), len(header)


def model_infer_bytes(model: str, row: dict[str, Any], dtypes: dict[str, str]) -> bytes:
    """A serialized OIP ``ModelInferRequest`` with one row in raw contents."""
    from servekit_protocol.oip_messages import ModelInferRequest

    request = ModelInferRequest(model_name=model)
    for name, datatype, shape, raw in _row_tensors(row, dtypes):
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(raw)
    return request.SerializeToString()


def build_payloads(registry_root: Path, model: str, directory: Path) -> ModelPayloads:
    """Write every request file of ``model``'s served version into ``directory``.

    Raises:
        PayloadError: The model is missing from the registry or has no usable row.
    """
    from modelregistry import RegistryError

    registry = Registry(registry_root)
    try:
        version = registry.resolve(model)
        manifest = registry.manifest(model, version)
    except RegistryError as exc:
        raise PayloadError(f"{model}: {exc}") from exc
    dtypes = input_dtypes(manifest)
    row = example_row(manifest)
    directory.mkdir(parents=True, exist_ok=True)
    tfs_rest = directory / f"{model}.tfs.json"
    tfs_rest.write_text(json.dumps({"instances": [row]}), encoding="utf-8")
    tfs_grpc = directory / f"{model}.predict.bin"
    tfs_grpc.write_bytes(predict_request_bytes(model, row, dtypes))
    v2_rest = directory / f"{model}.v2.json"
    v2_rest.write_text(json.dumps(v2_body(row, dtypes)), encoding="utf-8")
    v2_binary = directory / f"{model}.v2.bin"
    binary_body, binary_header = v2_binary_body(row, dtypes)
    v2_binary.write_bytes(binary_body)
    v2_grpc = directory / f"{model}.infer.bin"
    v2_grpc.write_bytes(model_infer_bytes(model, row, dtypes))
    return ModelPayloads(
        name=model,
        framework=manifest.framework,
        version=version,
        version_dir=registry.version_dir(model, version),
        row=row,
        input_dtypes=dtypes,
        tfs_rest=tfs_rest,
        tfs_grpc=tfs_grpc,
        v2_rest=v2_rest,
        v2_binary=v2_binary,
        v2_binary_header=binary_header,
        v2_grpc=v2_grpc,
    )
