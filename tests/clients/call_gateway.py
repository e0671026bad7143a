"""Call a server with one of the real Open Inference Protocol clients.

Run with .venv-clients/bin/python. Reads a JSON query from stdin and writes the
answer as JSON, so tests in the main environment compare it with v1 answers::

    {"client": "triton-http" | "triton-http-json" | "triton-grpc"
               | "kserve-rest" | "kserve-rest-json" | "kserve-grpc",
     "action": "infer" | "describe",
     "http": "127.0.0.1:8000", "grpc": "127.0.0.1:8001",
     "model": "m", "version": "", "id": "", "headers": {...},
     "parameters": {...},
     "inputs": [{"name", "datatype", "shape", "data"}
                or {"name", "datatype", "shape", "npy": "/path/of/array.npy"}],
     "outputs": [{"name", "class_count"}] or null,
     "compression": null | "gzip" | "deflate"}   (requests and answers)

An infer answer is ``{"id", "model_name", "model_version", "outputs": {name:
{"datatype", "shape", "data"}}}``; ``describe`` (tritonclient only) answers
liveness, readiness, server and model metadata and the model config. A client
error is answered as ``{"error": {"type", "status", "message"}}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import numpy as np

NUMPY_TYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}


def _array(spec: dict[str, Any]) -> np.ndarray:
    if "npy" in spec:
        # A large input, written by the test to a .npy file.
        return np.load(spec["npy"])
    data = spec["data"]
    if spec["datatype"] == "BYTES":
        data = [item.encode() for item in data]
    return np.array(data, dtype=NUMPY_TYPES[spec["datatype"]]).reshape(spec["shape"])


def _plain(array: np.ndarray) -> dict[str, Any]:
    values = array.reshape(-1).tolist()
    values = [v.decode() if isinstance(v, bytes) else v for v in values]
    return {"shape": list(array.shape), "data": values}


def _triton_infer(query: dict[str, Any]) -> dict[str, Any]:
    binary = query["client"] != "triton-http-json"
    if query["client"] == "triton-grpc":
        import tritonclient.grpc as triton

        client = triton.InferenceServerClient(url=query["grpc"])
    else:
        import tritonclient.http as triton  # type: ignore[no-redef]

        client = triton.InferenceServerClient(url=query["http"])
    inputs = []
    for spec in query["inputs"]:
        tensor = triton.InferInput(spec["name"], spec["shape"], spec["datatype"])
        if query["client"] == "triton-grpc":
            tensor.set_data_from_numpy(_array(spec))
        else:
            tensor.set_data_from_numpy(_array(spec), binary_data=binary)
        inputs.append(tensor)
    outputs = None
    if query.get("outputs") is not None:
        outputs = []
        for spec in query["outputs"]:
            count = spec.get("class_count", 0)
            if query["client"] == "triton-grpc":
                outputs.append(
                    triton.InferRequestedOutput(spec["name"], class_count=count)
                )
            else:
                outputs.append(
                    triton.InferRequestedOutput(
                        spec["name"], binary_data=binary, class_count=count
                    )
                )
    extra: dict[str, Any] = {}
    if query.get("compression") and query["client"] != "triton-grpc":
        extra["request_compression_algorithm"] = query["compression"]
        extra["response_compression_algorithm"] = query["compression"]
    result = client.infer(
        query["model"],
        inputs,
        model_version=query.get("version", ""),
        outputs=outputs,
        request_id=query.get("id", ""),
        headers=query.get("headers") or None,
        parameters=query.get("parameters") or None,
        **extra,
    )
    response = result.get_response()
    if query["client"] == "triton-grpc":
        answer = {
            "id": response.id,
            "model_name": response.model_name,
            "model_version": response.model_version,
            "raw": len(response.raw_output_contents) > 0,
            "names": [output.name for output in response.outputs],
        }
        datatypes = {output.name: output.datatype for output in response.outputs}
    else:
        answer = {
            "id": response.get("id", ""),
            "model_name": response["model_name"],
            "model_version": response["model_version"],
            "binary": [
                o["name"]
                for o in response["outputs"]
                if "binary_data_size" in o.get("parameters", {})
            ],
            "names": [output["name"] for output in response["outputs"]],
        }
        datatypes = {o["name"]: o["datatype"] for o in response["outputs"]}
    answer["outputs"] = {
        name: {"datatype": datatypes[name], **_plain(result.as_numpy(name))}
        for name in answer["names"]
    }
    return answer


def _triton_describe(query: dict[str, Any]) -> dict[str, Any]:
    from google.protobuf import json_format

    grpc = query["client"] == "triton-grpc"
    if grpc:
        import tritonclient.grpc as triton

        client = triton.InferenceServerClient(url=query["grpc"])
    else:
        import tritonclient.http as triton  # type: ignore[no-redef]

        client = triton.InferenceServerClient(url=query["http"])
    headers = query.get("headers") or None
    model, version = query["model"], query.get("version", "")

    def plain(message: Any) -> Any:
        if grpc:
            return json_format.MessageToDict(message, preserving_proto_field_name=True)
        return message

    config = client.get_model_config(model, version, headers=headers)
    return {
        "live": client.is_server_live(headers=headers),
        "ready": client.is_server_ready(headers=headers),
        "model_ready": client.is_model_ready(model, version, headers=headers),
        "server": plain(client.get_server_metadata(headers=headers)),
        "model": plain(client.get_model_metadata(model, version, headers=headers)),
        "config": plain(config.config if grpc else config),
    }


async def _kserve_infer(query: dict[str, Any]) -> dict[str, Any]:
    from kserve import (
        InferenceGRPCClient,
        InferenceRESTClient,
        InferInput,
        InferRequest,
        RESTConfig,
    )
    from kserve.protocol.infer_type import RequestedOutput

    binary = query["client"] != "kserve-rest-json"
    inputs = []
    for spec in query["inputs"]:
        tensor = InferInput(spec["name"], spec["shape"], spec["datatype"])
        tensor.set_data_from_numpy(_array(spec), binary_data=binary)
        inputs.append(tensor)
    outputs = None
    if query.get("outputs") is not None:
        outputs = [
            RequestedOutput(spec["name"], {"binary_data": binary})
            for spec in query["outputs"]
        ]
    request = InferRequest(
        model_name=query["model"],
        infer_inputs=inputs,
        request_id=query.get("id") or None,
        parameters=query.get("parameters") or None,
        request_outputs=outputs,
        model_version=query.get("version") or None,
    )
    headers = query.get("headers") or None
    if query["client"] == "kserve-grpc":
        client = InferenceGRPCClient(query["grpc"], retries=0)
        try:
            response = await client.infer(
                request, headers=list(headers.items()) if headers else None
            )
        finally:
            await client.close()
    else:
        rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
        try:
            response = await rest.infer(
                f"http://{query['http']}",
                request,
                model_name=query["model"],
                headers=headers,
            )
        finally:
            await rest.close()
    return {
        "id": response.id,
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": {
            output.name: {"datatype": output.datatype, **_plain(output.as_numpy())}
            for output in response.outputs
        },
    }


def _error(exc: Exception) -> dict[str, Any]:
    status = None
    for attribute in ("status", "code"):
        value = getattr(exc, attribute, None)
        if callable(value):
            value = value()
        if value is not None:
            status = str(value)
            break
    response = getattr(exc, "response", None)
    if status is None and response is not None:
        status = str(response.status_code)
    message = exc.message() if callable(getattr(exc, "message", None)) else str(exc)
    if callable(getattr(exc, "details", None)):
        message = exc.details()
    return {"error": {"type": type(exc).__name__, "status": status, "message": message}}


def main() -> None:
    query = json.load(sys.stdin)
    try:
        if query["client"].startswith("triton"):
            if query.get("action") == "describe":
                answer = _triton_describe(query)
            else:
                answer = _triton_infer(query)
        else:
            answer = asyncio.run(_kserve_infer(query))
    except Exception as exc:  # reported to the test, which asserts on it
        answer = _error(exc)
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
