"""A gRPC status message with spaces at either end reaches strict clients intact.

TF Serving's "Duplicate evaluation of signature: " (a MultiInference whose tasks
repeat the default signature) ends with a space. A header field value may not
begin or end with one (RFC 9113 8.2.1): an HTTP/2 client that validates headers,
as the ``h2`` library does by default, refuses the answer as a protocol error of
the whole connection, and HTTP/1.1 readers strip it from gRPC-Web answers. Both
servers percent-encode those spaces (%20, which gRPC's grammar allows for any
byte); every conforming client decodes them back, so grpcio's client and the
official stubs get the same details string as before.
"""

from __future__ import annotations

import socket
from urllib.parse import unquote

import grpc
import httpx
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ResponseReceived, StreamEnded, TrailersReceived
from servekit_protocol import grpcweb, messages
from tensorflow_serving.apis import inference_pb2, prediction_service_pb2_grpc

from tests.security.http2 import Target
from tests.security.stack import Stack

pytestmark = pytest.mark.integration

MULTI_INFERENCE = "/tensorflow.serving.PredictionService/MultiInference"
MESSAGE = "Duplicate evaluation of signature: "
"""TF Serving's wording, with the default signature's empty name at its end."""
REGRESS = "tensorflow/serving/regress"
READ_SECONDS = 30.0
"""Most a refused call may take to be answered on a loaded 2-core machine."""


def _duplicate_request() -> messages.MultiInferenceRequest:
    """Two regressions of ``linear`` on the default signature: refused."""
    request = messages.MultiInferenceRequest()
    for _ in range(2):
        task = request.tasks.add()
        task.model_spec.name = "linear"
        task.method_name = REGRESS
    example = request.input.example_list.examples.add()
    example.features.feature["a"].float_list.value.append(1.0)
    example.features.feature["b"].float_list.value.append(2.0)
    return request


def _strict_h2_call(port: int, metadata: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """The answer's headers and trailers, as an ``h2`` client that validates
    every header it receives (its default) reads them."""
    connection = H2Connection(
        H2Configuration(client_side=True, header_encoding="utf-8")
    )
    received: dict[str, str] = {}
    with socket.create_connection(("127.0.0.1", port), timeout=READ_SECONDS) as sock:
        connection.initiate_connection()
        stream = connection.get_next_available_stream_id()
        connection.send_headers(
            stream,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", MULTI_INFERENCE),
                (":authority", f"127.0.0.1:{port}"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                *metadata,
            ],
        )
        connection.send_data(
            stream,
            grpcweb.frame(_duplicate_request().SerializeToString()),
            end_stream=True,
        )
        sock.sendall(connection.data_to_send())
        ended = False
        while not ended:
            data = sock.recv(65536)
            assert data, "the server closed the connection before the answer ended"
            for event in connection.receive_data(data):
                if isinstance(event, ResponseReceived | TrailersReceived):
                    received.update((str(k), str(v)) for k, v in event.headers)
                ended = ended or isinstance(event, StreamEnded)
            sock.sendall(connection.data_to_send())
    return received


def test_a_strict_http2_client_reads_the_message_with_its_spaces(
    target: Target,
) -> None:
    received = _strict_h2_call(target.port, target.metadata)
    assert received["grpc-status"] == str(grpc.StatusCode.INVALID_ARGUMENT.value[0])
    assert unquote(received["grpc-message"]) == MESSAGE


def test_grpcio_and_the_official_stubs_get_the_same_details(target: Target) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{target.port}") as channel:
        with pytest.raises(grpc.RpcError) as raw:
            channel.unary_unary(MULTI_INFERENCE)(
                _duplicate_request().SerializeToString(),
                metadata=target.metadata,
                timeout=READ_SECONDS,
            )
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        official = inference_pb2.MultiInferenceRequest.FromString(
            _duplicate_request().SerializeToString()
        )
        with pytest.raises(grpc.RpcError) as stubbed:
            stub.MultiInference(
                official, metadata=target.metadata, timeout=READ_SECONDS
            )
    for failed in (raw.value, stubbed.value):
        assert failed.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert failed.details() == MESSAGE


def test_a_grpc_web_client_reads_the_message_with_its_spaces(
    http2_stack: Stack,
) -> None:
    # An error before any answer message is a trailers-only answer: the
    # status travels in the HTTP/1.1 response headers.
    answer = httpx.post(
        f"http://127.0.0.1:{http2_stack.model_server.rest_port}{MULTI_INFERENCE}",
        content=grpcweb.frame(_duplicate_request().SerializeToString()),
        headers={"content-type": "application/grpc-web+proto"},
        timeout=READ_SECONDS,
    )
    assert answer.status_code == 200
    assert answer.headers["grpc-status"] == "3"
    assert grpcweb.decode_status_message(answer.headers["grpc-message"]) == MESSAGE
