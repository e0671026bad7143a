"""What the gRPC server's HPACK shortcuts save, per call, against plain ``hpack``.

Three header blocks a unary call of the model server costs: decoding the
client's request block (after the first call a client's HPACK encoder sends it
as indexed fields, the same bytes every time), encoding the response headers and
encoding the trailers (``grpc-status`` and the call's ``x-request-id``). Each is
timed with ``hpack``'s own coders as ``h2`` would use them and with the server's
(:mod:`servekit_protocol.grpc_server.hpack_cache`, never-indexed metadata, no
Huffman coding), side by side in rounds, medians reported. A fourth row times
``h2``'s RFC 9113 checks of the decoded request fields, ``h2``'s own and with
:mod:`servekit_protocol.grpc_server.header_checks` installed.

Run as ``python -m benchmarks.hpackcost [--rounds N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from h2.stream import H2Stream
from h2.utilities import HeaderValidationFlags
from hpack import Decoder, Encoder
from servekit_protocol.grpc_server import header_checks
from servekit_protocol.grpc_server.calls import metadata_headers
from servekit_protocol.grpc_server.connection import _CONFIG
from servekit_protocol.grpc_server.hpack_cache import (
    RESPONSE_HEADERS,
    ConstantEncoder,
    RepeatDecoder,
)

REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/tensorflow.serving.PredictionService/Predict"),
    (b":authority", b"127.0.0.1:8500"),
    (b"te", b"trailers"),
    (b"content-type", b"application/grpc"),
    (b"user-agent", b"grpc-python/1.70.0 grpc-c/45.0.0 (linux; chttp2)"),
]


def _micros(action: Callable[[], object], count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        action()
    return (time.perf_counter() - started) / count * 1e6


def _request_ids() -> Callable[[], str]:
    counter = iter(range(1 << 62))
    return lambda: f"{next(counter):032x}"


def _checks(count: int, fields: list[object]) -> tuple[float, float]:
    stream = H2Stream(1, _CONFIG, 65_535, 65_535)
    flags = HeaderValidationFlags(False, False, False, False)

    def check() -> object:
        return stream._process_received_headers(fields, flags, None)  # type: ignore[arg-type]

    header_checks.uninstall()
    try:
        plain = _micros(check, count)
    finally:
        header_checks.install()
    return plain, _micros(check, count)


def measure(count: int) -> dict[str, tuple[float, float]]:
    """One round: (hpack, server) microseconds per block for each of the three."""
    client = Encoder()
    first, repeat = client.encode(REQUEST), client.encode(REQUEST)
    plain_decoder, server_decoder = Decoder(16384), RepeatDecoder(16384)
    for decoder in (plain_decoder, server_decoder):
        decoder.decode(first, raw=True)
        decoder.decode(repeat, raw=True)
    plain_encoder, server_encoder = Encoder(), ConstantEncoder()
    plain_ids, server_ids = _request_ids(), _request_ids()
    return {
        "request block (repeated, indexed)": (
            _micros(lambda: plain_decoder.decode(repeat, raw=True), count),
            _micros(lambda: server_decoder.decode(repeat, raw=True), count),
        ),
        "response headers": (
            _micros(lambda: plain_encoder.encode(list(RESPONSE_HEADERS)), count),
            _micros(lambda: server_encoder.encode(list(RESPONSE_HEADERS)), count),
        ),
        "trailers with a request id": (
            _micros(
                lambda: plain_encoder.encode(
                    [(b"grpc-status", b"0"), (b"x-request-id", plain_ids().encode())]
                ),
                count,
            ),
            _micros(
                lambda: server_encoder.encode(
                    [
                        (b"grpc-status", b"0"),
                        *metadata_headers((("x-request-id", server_ids()),)),
                    ]
                ),
                count,
            ),
        ),
        "request checks (h2, RFC 9113)": _checks(
            count, list(server_decoder.decode(repeat, raw=True))
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=5000, help="blocks per timing")
    args = parser.parse_args()
    rounds = [measure(args.count) for _ in range(args.rounds)]
    print("| block | hpack µs | servekit µs | saved µs |")
    print("| --- | ---: | ---: | ---: |")
    for name in rounds[0]:
        plain = statistics.median(r[name][0] for r in rounds)
        server = statistics.median(r[name][1] for r in rounds)
        print(f"| {name} | {plain:.1f} | {server:.1f} | {plain - server:.1f} |")


if __name__ == "__main__":
    main()
