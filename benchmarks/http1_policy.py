"""What the HTTP/1.1 listener limits cost per request, side by side in one run.

uvicorn's httptools protocol and servekit's guarded subclass
(:mod:`servekit_protocol.http1`) are fed the same keep-alive ``:predict`` requests
over an in-memory transport, alternating in rounds, and answered by the same
minimal ASGI app, so the difference is the policy alone (timers armed and
cancelled, bytes counted, the header size summed). Not a test:
``python -m benchmarks.http1_policy [--requests N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import uvicorn
from servekit_protocol.http1 import ListenerLimits, protocol_class
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

BODY = b'{"instances": [{"a": 1.0, "b": 2.0}]}'
REQUEST = (
    b"POST /v1/models/linear:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/json\r\nUser-Agent: bench\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self._closing = False

    def write(self, data: Any) -> None:
        self.written += len(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in ("peername", "sockname"):
            return ("127.0.0.1", 1)
        return default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _app(_scope: Any, receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": b'{"predictions":[9.0]}'})


async def _run(protocol_type: type[HttpToolsProtocol], requests: int) -> float:
    config = uvicorn.Config(_app, lifespan="off", log_config=None, access_log=False)
    config.load()
    protocol = protocol_type(config=config, server_state=ServerState(), app_state={})
    transport = _Transport()
    protocol.connection_made(transport)
    started = time.perf_counter()
    for _ in range(requests):
        protocol.data_received(REQUEST)
        # Let the request's task answer before the next one arrives.
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    elapsed = time.perf_counter() - started
    protocol.connection_lost(None)
    return elapsed / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    guarded = protocol_class(ListenerLimits(), "bench")
    plain: list[float] = []
    limited: list[float] = []
    for _ in range(args.rounds):
        plain.append(asyncio.run(_run(HttpToolsProtocol, args.requests)))
        limited.append(asyncio.run(_run(guarded, args.requests)))
    base, policy = statistics.median(plain), statistics.median(limited)
    print(f"uvicorn httptools protocol: {base * 1e6:.2f} us/request (median)")
    print(f"with servekit's limits:     {policy * 1e6:.2f} us/request (median)")
    print(f"cost: {(policy - base) * 1e6:+.2f} us/request, ratio {policy / base:.3f}")


if __name__ == "__main__":
    main()
