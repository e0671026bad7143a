"""Small REST backends run in the test process, for the gateway's forwarding tests.

- `BusyBackend`: a backend whose queue is full (REST 503s, gRPC-Web UNAVAILABLE
  once per model name), counting the calls it gets.
- `not_found_backend`: what TF Serving's REST port answers outside `/v1/` (404),
  so a gateway learns that it has no gRPC-Web.
- `silent_backend`: a port that accepts connections and never answers.

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
from servekit_protocol.tensors import from_ndarray


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
