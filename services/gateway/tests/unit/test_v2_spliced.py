"""A large ModelInfer's raw inputs written into the backend's Predict as views
(`codecs.v2_spliced`) give the Predict, and the errors, of the worker path
(`codecs.v2_grpc.encode_infer_message`), which parses the message whole."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest
from gateway.codecs.v2_grpc import encode_infer_message
from gateway.codecs.v2_spliced import (
    MAX_TOP_LEVEL_FIELDS,
    RawInfer,
    encode_raw_infer,
    read_raw_infer,
)
from gateway.errors import GatewayError
from servekit_protocol import messages
from servekit_protocol import oip_messages as oip
from servekit_protocol.errors import ProtocolError
from servekit_protocol.tensor_limits import TensorLimits

Wanted = Mapping[str, np.dtype[Any]] | None


def _request() -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name="m", model_version="2", id="abc")
    request.parameters["signature_name"].string_param = "other"
    rng = np.random.default_rng(3)
    request.inputs.add(name="x", datatype="FP32", shape=[3, 4])
    request.raw_input_contents.append(rng.normal(size=12).astype("<f4").tobytes())
    request.inputs.add(name="n", datatype="INT64", shape=[3])
    request.raw_input_contents.append(np.array([1, -2, 3], "<i8").tobytes())
    request.inputs.add(name="b", datatype="BOOL", shape=[2])
    request.raw_input_contents.append(b"\x01\x00")
    request.inputs.add(name="scalar", datatype="FP64", shape=[])
    request.raw_input_contents.append(np.array(2.5, "<f8").tobytes())
    request.inputs.add(name="empty", datatype="INT32", shape=[0, 5])
    request.raw_input_contents.append(b"")
    request.outputs.add(name="y").parameters["classification"].int64_param = 2
    request.outputs.add(name="z")
    return request


def _changed(change: Callable[[oip.ModelInferRequest], object]) -> bytes:
    request = _request()
    change(request)
    return request.SerializeToString()


def _outcome(
    data: bytes, wanted: Wanted, limits: TensorLimits, spliced: bool
) -> tuple[str, object]:
    """What the request comes to: the backend's Predict and the answer's
    request fields, or the error's type and message."""
    try:
        if spliced:
            raw = read_raw_infer(memoryview(data))
            assert raw is not None, "left to the worker path"
            encoded = encode_raw_infer(raw, wanted, limits)
            predict = b"".join(encoded.parts)
            request = encoded.request
        else:
            worker = encode_infer_message(data, wanted, limits)
            predict, request = worker.message, worker.request
    except ProtocolError as exc:
        return type(exc).__name__, exc.message
    except GatewayError as exc:
        return type(exc).__name__, str(exc)
    return "ok", (messages.PredictRequest.FromString(predict), request)


CASES: dict[str, Callable[[], bytes]] = {
    "valid": lambda: _request().SerializeToString(),
    "no inputs": lambda: oip.ModelInferRequest(
        model_name="m", raw_input_contents=[b"\0"]
    ).SerializeToString(),
    "one raw too many": lambda: _changed(lambda r: r.raw_input_contents.append(b"")),
    "no name": lambda: _changed(lambda r: setattr(r.inputs[1], "name", "")),
    "name twice": lambda: _changed(lambda r: setattr(r.inputs[1], "name", "x")),
    "negative dimension": lambda: _changed(lambda r: r.inputs[0].shape.append(-1)),
    "unknown datatype": lambda: _changed(
        lambda r: setattr(r.inputs[0], "datatype", "FP8")
    ),
    "bytes short": lambda: _changed(lambda r: r.inputs[0].shape.__setitem__(0, 4)),
    "BOOL byte 2": lambda: _changed(
        lambda r: r.raw_input_contents.__setitem__(2, b"\x01\x02")
    ),
    "classification not an integer": lambda: _changed(
        lambda r: setattr(
            r.outputs[0].parameters["classification"], "string_param", "two"
        )
    ),
}


@pytest.mark.parametrize(
    "wanted",
    [
        pytest.param(None, id="dtypes unknown"),
        pytest.param({"x": np.dtype(np.float32)}, id="dtypes equal"),
        pytest.param({"x": np.dtype(np.float64), "n": np.dtype(np.int32)}, id="cast"),
        pytest.param({"b": np.dtype(np.float32)}, id="BOOL cast"),
    ],
)
@pytest.mark.parametrize("case", list(CASES))
def test_spliced_is_the_worker_path(case: str, wanted: Wanted) -> None:
    data = CASES[case]()
    limits = TensorLimits()
    assert _outcome(data, wanted, limits, True) == _outcome(data, wanted, limits, False)


@pytest.mark.parametrize("max_elements", [31, 32])
@pytest.mark.parametrize("max_bytes", [100, 148, 180])
def test_the_tensor_limits_count_as_the_worker_path(
    max_elements: int, max_bytes: int
) -> None:
    data = _request().SerializeToString()
    limits = TensorLimits(max_elements=max_elements, max_bytes=max_bytes)
    wanted = {"x": np.dtype(np.float64)}
    assert _outcome(data, wanted, limits, True) == _outcome(data, wanted, limits, False)


def test_raw_inputs_are_views_of_the_message() -> None:
    data = _request().SerializeToString()
    raw = read_raw_infer(memoryview(data))
    assert isinstance(raw, RawInfer)
    assert raw.model_name == "m" and raw.model_version == "2"
    encoded = encode_raw_infer(raw, None, TensorLimits())
    views = [part for part in encoded.parts if isinstance(part, memoryview)]
    # The empty input has no tensor_content, so no view.
    assert [len(view) for view in views] == [48, 24, 2, 8]
    assert all(view.obj is data for view in views)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(
            oip.ModelInferRequest(
                model_name="m", inputs=[{"name": "x", "datatype": "FP32"}]
            ).SerializeToString(),
            id="no raw inputs",
        ),
        pytest.param(
            _changed(lambda r: setattr(r.inputs[1], "datatype", "BYTES")),
            id="BYTES input",
        ),
        pytest.param(
            _changed(lambda r: r.inputs[0].contents.fp32_contents.append(1.0)),
            id="typed contents too",
        ),
        pytest.param(_request().SerializeToString()[:-3], id="truncated"),
        pytest.param(
            _request().SerializeToString() + b"\x38\x01", id="raw field as a varint"
        ),
        pytest.param(
            oip.ModelInferRequest(
                raw_input_contents=[b""] * (MAX_TOP_LEVEL_FIELDS + 1)
            ).SerializeToString(),
            id="too many fields",
        ),
        pytest.param(
            _request().SerializeToString() + b"\x0a\x01\xff", id="name not UTF-8"
        ),
    ],
)
def test_what_the_walk_does_not_expect_goes_to_the_workers(data: bytes) -> None:
    assert read_raw_infer(memoryview(data)) is None
