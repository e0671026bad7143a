"""Small REST backends run in the test process, for the gateway's forwarding tests.

- `BusyBackend`: a backend whose queue is full (REST 503s, gRPC-Web UNAVAILABLE
  once per model name), counting the calls it gets.
- `not_found_backend`: what TF Serving's REST port answers outside `/v1/` (404),
  so a gateway learns that it has no gRPC-Web.
- `silent_backend`: a port that accepts connections and never answers.
- `garbled_backend`: a gRPC-Web port whose Predict answers are not
  PredictResponses: well formed at the top level, garbage inside.
- `EndlessBackend`: a port answering every POST 200 with a chunked body that
  does not end (up to ``ENDLESS_CAP_BYTES``), counting what it sent.

Each binds 127.0.0.1 on a port it picks itself.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from servekit_protocol import grpcweb, messages
from servekit_protocol.metadata import pack_signature_def_map
from servekit_protocol.tensors import from_ndarray, varint


class BusyBackend(ThreadingHTTPServer):
    """A REST backend whose queue is full: `/v1/models/busy` always answers 503,
    `/v1/models/flaky` answers 503 once, then 200; a gRPC-Web Predict answers
    UNAVAILABLE the first time for each model name, then y = [42.0].

    gRPC-Web Predicts are counted per model name (``web:<name>``); other
    gRPC-Web methods (the gateway's status checks, made each second for its
    readiness, so as many as the test's duration allows) answer UNIMPLEMENTED
    and are not counted."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _BusyHandler)
        self.calls: dict[str, int] = {"busy": 0, "flaky": 0}
        self.lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _BusyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: BusyBackend

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.path.startswith("/tensorflow.serving."):
            self._grpc_web(body)
            return
        model = "busy" if self.path.startswith("/v1/models/busy") else "flaky"
        with self.server.lock:
            self.server.calls[model] += 1
            first = self.server.calls[model] == 1
        if model == "busy" or first:
            status, body = 503, b'{"error": "Batch queue full: 1 batches enqueued"}'
        else:
            status, body = 200, b'{"predictions": [42.0]}'
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _grpc_web(self, body: bytes) -> None:
        if not self.path.endswith("/Predict"):
            self.send_response(200)
            self.send_header("content-type", "application/grpc-web+proto")
            self.send_header("grpc-status", "12")
            self.send_header("content-length", "0")
            self.end_headers()
            return
        request = messages.PredictRequest.FromString(grpcweb.request_message(body))
        key = f"web:{request.model_spec.name}"
        with self.server.lock:
            self.server.calls[key] = self.server.calls.get(key, 0) + 1
            first = self.server.calls[key] == 1
        self.send_response(200)
        self.send_header("content-type", "application/grpc-web+proto")
        if first:
            self.send_header("grpc-status", "14")
            self.send_header("grpc-message", "Batch queue full")
            payload = b""
        else:
            response = messages.PredictResponse()
            response.model_spec.name = request.model_spec.name
            response.model_spec.version.value = 1
            from_ndarray(np.array([42.0]), into=response.outputs["y"])
            payload = grpcweb.frame(response.SerializeToString())
            payload += grpcweb.trailer_frame(0, "", ())
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _NotFoundHandler(BaseHTTPRequestHandler):
    """What TF Serving's REST port answers outside `/v1/`: 404."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        body = b'{"error": "Not found"}'
        self.send_response(404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serving(server: ThreadingHTTPServer) -> Iterator[ThreadingHTTPServer]:
    """`server` answering on a daemon thread until the block ends."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def not_found_backend() -> Iterator[str]:
    """The address of a REST port that answers every POST 404, as TF Serving's
    does outside `/v1/`."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotFoundHandler)
    server.daemon_threads = True
    with serving(server):
        yield f"127.0.0.1:{server.server_address[1]}"


@contextlib.contextmanager
def silent_backend() -> Iterator[str]:
    """The address of a port that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


GARBLED_BYTES_A_ROW = 64 * 1024
"""The garbled answer's size for each row asked."""


def garbled_predict_response(model: str, size: int) -> bytes:
    """A PredictResponse's bytes that do not parse: its model spec and one
    output entry are well formed, but the output's TensorProto holds ``size``
    bytes of ``tensor_content`` followed by a field numbered 0."""
    spec = messages.ModelSpec(name=model)
    spec.version.value = 1
    tensor = b"\x22" + varint(size) + bytes(size) + b"\x00"
    entry = b"\x0a\x01y\x12" + varint(len(tensor)) + tensor
    spec_bytes = spec.SerializeToString()
    return (
        b"\x12"
        + varint(len(spec_bytes))
        + spec_bytes
        + b"\x0a"
        + varint(len(entry))
        + entry
    )


def _garbled_metadata() -> bytes:
    """GetModelMetadata's answer: one float64 input ``x`` of shape [-1, 1],
    one float64 output ``y``."""
    signatures = messages.SignatureDefMap()
    signature = signatures.signature_def["serving_default"]
    signature.method_name = "tensorflow/serving/predict"
    for tensors, name in ((signature.inputs, "x"), (signature.outputs, "y")):
        info = tensors[name]
        info.name = f"{name}:0"
        info.dtype = messages.DT_DOUBLE
        info.tensor_shape.dim.add(size=-1)
        info.tensor_shape.dim.add(size=1)
    response = messages.GetModelMetadataResponse()
    response.model_spec.name = "garbled"
    response.model_spec.version.value = 1
    pack_signature_def_map(signatures, into=response.metadata["signature_def"])
    return response.SerializeToString()


class _GarbledHandler(BaseHTTPRequestHandler):
    """gRPC-Web Predicts answered OK with `garbled_predict_response`, of
    ``GARBLED_BYTES_A_ROW`` bytes for each row of the request's inputs (their
    first dimension); any other method UNIMPLEMENTED."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        payload = grpcweb.trailer_frame(12, "", ())
        if self.path.endswith("/GetModelMetadata"):
            payload = grpcweb.frame(_garbled_metadata()) + grpcweb.trailer_frame(
                0, "", ()
            )
        elif self.path.endswith("/Predict"):
            request = messages.PredictRequest.FromString(grpcweb.request_message(body))
            rows = max(
                tensor.tensor_shape.dim[0].size for tensor in request.inputs.values()
            )
            answer = garbled_predict_response(
                request.model_spec.name, rows * GARBLED_BYTES_A_ROW
            )
            payload = grpcweb.frame(answer) + grpcweb.trailer_frame(0, "", ())
        self.send_response(200)
        self.send_header("content-type", "application/grpc-web+proto")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def garbled_backend() -> Iterator[str]:
    """The address of a gRPC-Web port (`_GarbledHandler`)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _GarbledHandler)
    server.daemon_threads = True
    with serving(server):
        yield f"127.0.0.1:{server.server_address[1]}"


ENDLESS_CAP_BYTES = 256 * 1024 * 1024
"""Most bytes an `EndlessBackend` answer sends before it waits for the client
to go: a client that never stops reading fails its test rather than filling
the machine's memory."""


class EndlessBackend(ThreadingHTTPServer):
    """Every POST answered 200, ``content-type`` as a gRPC-Web or REST answer
    by its path, with a chunked body of zero bytes that goes on until the
    client closes the connection (or ``ENDLESS_CAP_BYTES``, then silence
    until it does). ``sent``: body bytes each answer sent, in order."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _EndlessHandler)
        self.sent: list[int] = []
        self.lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _EndlessHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: EndlessBackend

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        web = self.path.startswith("/tensorflow.serving.")
        self.send_response(200)
        self.send_header(
            "content-type", "application/grpc-web+proto" if web else "application/json"
        )
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        piece = 64 * 1024
        chunk = b"%x\r\n" % piece + bytes(piece) + b"\r\n"
        sent = 0
        try:
            while sent < ENDLESS_CAP_BYTES:
                self.wfile.write(chunk)
                sent += piece
            # Silent until the client goes.
            self.rfile.read(1)
        except OSError:
            pass
        with self.server.lock:
            self.server.sent.append(sent)
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass
