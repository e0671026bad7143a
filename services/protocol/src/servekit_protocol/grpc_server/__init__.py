"""servekit's gRPC server: ``h2`` for HTTP/2, grpc.aio's handler registration.

| module | role |
| --- | --- |
| ``server`` | :class:`GrpcServer`: registration, binding, start/stop, connection cap, timers |
| ``connection`` | one connection: ``h2``'s events, buffered requests, answers, timers |
| ``backpressure`` | reading paused while the client does not read, sliced reads, GOAWAY and close |
| ``calls`` | one call: metadata, request decoding, handler run, status trailers |
| ``meter`` | flood checks on the incoming frame headers, before ``h2`` reads them |
| ``limits`` | :class:`Http2Limits`, every limit with its default |
| ``literals`` | HPACK literals for hand-built header blocks |
| ``frame_repr`` | ``hyperframe``'s frame ``repr`` without copying payloads (``h2`` builds one per frame) |
| ``hpack_cache`` | ``hpack``'s coders, skipping repeated request blocks and constant answer blocks |
"""

from servekit_protocol.grpc_server.calls import (
    Authenticate,
    OffloadedDecoder,
    ServicerContext,
)
from servekit_protocol.grpc_server.limits import Http2Limits
from servekit_protocol.grpc_server.literals import hpack_integer, hpack_literal
from servekit_protocol.grpc_server.server import GrpcServer

__all__ = [
    "Authenticate",
    "GrpcServer",
    "Http2Limits",
    "OffloadedDecoder",
    "ServicerContext",
    "hpack_integer",
    "hpack_literal",
]
