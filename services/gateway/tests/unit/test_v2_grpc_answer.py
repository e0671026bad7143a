"""A large ModelInfer's answer written from the backend's bytes
(`codecs.v2_grpc_answer`) is the one built from the parsed answer, byte for
byte, errors included."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from gateway.clients.answers import read_answer
from gateway.codecs.v2 import InferRequest, RequestedOutput
from gateway.codecs.v2_grpc import format_model_infer
from gateway.codecs.v2_grpc_answer import (
    chosen_outputs,
    write_infer_answer,
    written_answer,
)
from gateway.errors import GatewayError
from servekit_protocol import messages
from servekit_protocol.tensors import from_ndarray


def _response() -> messages.PredictResponse:
    response = messages.PredictResponse()
    response.model_spec.name = "m"
    response.model_spec.version.value = 3
    rng = np.random.default_rng(4)
    outputs = response.outputs
    from_ndarray(rng.normal(size=(5, 3)), into=outputs["doubles"])
    from_ndarray(rng.normal(size=7).astype(np.float32), into=outputs["floats"])
    from_ndarray(np.arange(6, dtype=np.int64), into=outputs["packed ints"], packed=True)
    from_ndarray(np.array(1.5), into=outputs["scalar"])
    from_ndarray(np.zeros((0, 4)), into=outputs["empty"])
    return response


def _request(*names: str, request_id: str | None = "r1") -> InferRequest:
    requested = [RequestedOutput(name, None, 0) for name in names]
    return InferRequest({}, request_id, list(names) or None, {}, requested)


def _outcome(
    response: messages.PredictResponse,
    request: InferRequest,
    raw: bool,
    written: bool,
) -> tuple[str, object]:
    data = response.SerializeToString()
    try:
        if written:
            received = read_answer(data, 2)
            assert received is not None
            return "ok", write_infer_answer("m", "3", received, request, raw)
        parsed = messages.PredictResponse.FromString(data)
        outputs = chosen_outputs("m", request, parsed)
        answer = format_model_infer("m", "3", outputs, request, raw=raw)
        return "ok", answer.SerializeToString()
    except GatewayError as exc:
        return type(exc).__name__, str(exc)


def _with(
    change: Callable[[messages.PredictResponse], object],
) -> messages.PredictResponse:
    response = _response()
    change(response)
    return response


def _classified() -> InferRequest:
    request = _request("doubles")
    request.requested[0] = RequestedOutput("doubles", None, 2)
    return request


RESPONSES: dict[str, Callable[[], messages.PredictResponse]] = {
    "typed floats, packed ints, a scalar, empty": _response,
    "int64_val": lambda: _with(
        lambda r: from_ndarray(np.arange(3), into=r.outputs["int64_val"])
    ),
    "strings": lambda: _with(
        lambda r: from_ndarray(np.array([b"a", b"bc"], object), into=r.outputs["s"])
    ),
    "short tensor_content": lambda: _with(
        lambda r: setattr(r.outputs["packed ints"], "tensor_content", b"\0" * 47)
    ),
    "a single value filling the shape": lambda: _with(
        lambda r: r.outputs["floats"].tensor_shape.dim.add(size=7)
    ),
    "double_val of a float tensor": lambda: _with(
        lambda r: setattr(r.outputs["doubles"], "dtype", messages.DT_FLOAT)
    ),
    "negative dimension": lambda: _with(
        lambda r: setattr(r.outputs["doubles"].tensor_shape.dim[0], "size", -1)
    ),
    "bfloat16": lambda: _with(
        lambda r: setattr(r.outputs["packed ints"], "dtype", messages.DT_BFLOAT16)
    ),
}
REQUESTS: dict[str, Callable[[], InferRequest]] = {
    "every output": _request,
    "two in order, no id": lambda: _request("floats", "doubles", request_id=None),
    "packed ints": lambda: _request("packed ints"),
    "an unknown output": lambda: _request("doubles", "nope"),
    "classification": _classified,
}


@pytest.mark.parametrize("raw", [True, False])
@pytest.mark.parametrize("request_case", list(REQUESTS))
@pytest.mark.parametrize("response_case", list(RESPONSES))
def test_written_is_built_from_the_parsed_answer(
    response_case: str, request_case: str, raw: bool
) -> None:
    response = RESPONSES[response_case]()
    request = REQUESTS[request_case]()
    assert _outcome(response, request, raw, True) == _outcome(
        response, request, raw, False
    )


def test_float_values_are_written_as_they_came() -> None:
    response = _response()
    data = response.SerializeToString()
    received = read_answer(data, 2)
    assert received is not None
    answer = write_infer_answer("m", "3", received, _request("doubles"), raw=True)
    values = np.asarray(response.outputs["doubles"].double_val, "<f8").tobytes()
    assert answer.endswith(values)


@pytest.mark.parametrize(
    ("response_case", "request_case", "written"),
    [
        ("typed floats, packed ints, a scalar, empty", "every output", True),
        ("typed floats, packed ints, a scalar, empty", "packed ints", True),
        ("int64_val", "two in order, no id", True),
        ("int64_val", "every output", False),
        ("strings", "packed ints", True),
        ("typed floats, packed ints, a scalar, empty", "classification", False),
        ("typed floats, packed ints, a scalar, empty", "an unknown output", False),
        ("a single value filling the shape", "packed ints", True),
        ("a single value filling the shape", "two in order, no id", False),
    ],
)
def test_what_is_written_from_the_bytes(
    response_case: str, request_case: str, written: bool
) -> None:
    data = RESPONSES[response_case]().SerializeToString()
    answer = written_answer("m", "3", data, REQUESTS[request_case]())
    assert (answer is not None) == written
