"""Unary gRPC calls to a backend over HTTP/2, framed by the ``h2`` library.

grpc.aio reads a large answer in its Cython receive path, which copies the
byte buffer into Python bytes twice with the GIL held: a 64 MiB answer holds
the gateway's event loop 85-100 ms at a stretch. Here the answer is read as
its DATA frames arrive, one socket read at a time (at most 256 KiB of frames
per callback), kept as the frames' bytes, and joined once whole in a thread
(``bytes.join`` releases the GIL from 1 MiB), so no stretch of the loop grows
with the answer's size.

``h2.connection.H2Connection`` parses and writes frames, keeps HPACK state,
stream states and flow-control windows; this module keeps only the client's
policy: one connection per backend address, reused and multiplexed up to the
backend's SETTINGS_MAX_CONCURRENT_STREAMS (a further connection beyond it,
up to :data:`MAX_CONNECTIONS`, then callers wait), a reconnect backoff of
100 ms doubling to 1 s as ``pool.CHANNEL_OPTIONS`` gives grpc.aio, PINGs on a
connection that has calls under way and has gone quiet, bounded receive
windows acknowledged as frames are read, a cap on the answer's size, the
stream reset (CANCEL) when the caller gives up or its deadline passes, and a
call the backend did not process (above its GOAWAY's last stream id) sent
again on another connection.

Errors are raised as the pool expects them of grpc.aio: a gRPC status as
:class:`~gateway.clients.grpcweb.RpcFailed`, a backend that cannot be reached
or drops the connection as :class:`~gateway.clients.http.ConnectionFailed`
(UNAVAILABLE, retried).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import grpc

from gateway.clients.grpcweb import RpcFailed
from gateway.clients.h2connection import BackendConnection, Unprocessed
from gateway.clients.http import ConnectionFailed

MAX_CONNECTIONS = 8
"""Connections to one backend when every one of them is at the backend's
stream limit; further callers wait for a stream to end."""
MIN_BACKOFF_SECONDS = 0.1
MAX_BACKOFF_SECONDS = 1.0
"""After a failed connection attempt, calls fail at once (UNAVAILABLE) until
the backoff has passed; it doubles on each failure, as grpc's reconnect
backoff (``pool.CHANNEL_OPTIONS``)."""
CONNECT_TIMEOUT_SECONDS = 5.0
"""Longest wait for a connection and the backend's SETTINGS, within the
call's own deadline."""
UNPROCESSED_RESENDS = 2
"""Times a call the backend did not process (above its GOAWAY's last stream
id) is sent again at once on another connection, as gRPC's transparent retry
does, before it fails as UNAVAILABLE to the pool's retry policy: a backend
draining its connection is not a failure of the backend (nor counted by its
circuit breaker)."""
JOIN_IN_THREAD_BYTES = 1024 * 1024
"""Answers from this size up are joined in a thread (the GIL released)."""


class H2Channel:
    """Every connection to one backend address.

    Args:
        address: ``host:port`` of the backend's gRPC port.
        max_answer_bytes: The largest answer message accepted
            (RESOURCE_EXHAUSTED beyond).
    """

    def __init__(self, address: str, max_answer_bytes: int) -> None:
        self.address = address
        self.max_answer_bytes = max_answer_bytes
        host, _, port = address.rpartition(":")
        self._host = host.strip("[]")
        self._port = int(port)
        self._connections: list[BackendConnection] = []
        self._connecting: asyncio.Task[BackendConnection] | None = None
        self._room = asyncio.Event()
        self._backoff = MIN_BACKOFF_SECONDS
        self._retry_at = 0.0
        self._last_error = ""

    async def unary(
        self,
        path: str,
        parts: Sequence[bytes | memoryview],
        timeout: float,
        metadata: Sequence[tuple[str, str]],
    ) -> bytes:
        """Call ``path`` (``/package.Service/Method``) with the framed request
        ``parts`` (prefix and message, sent one after the other); the answer
        message's bytes.

        Raises:
            RpcFailed: the call ended with a status other than OK
                (DEADLINE_EXCEEDED when ``timeout`` seconds passed first).
            ConnectionFailed: the backend could not be reached or dropped the
                connection.
        """
        deadline = time.monotonic() + timeout
        try:
            async with asyncio.timeout(timeout):
                answer = await self._call(path, parts, deadline, metadata)
        except TimeoutError:
            raise RpcFailed(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"deadline exceeded waiting for backend {self.address}",
            ) from None
        return await _joined(answer)

    async def _call(
        self,
        path: str,
        parts: Sequence[bytes | memoryview],
        deadline: float,
        metadata: Sequence[tuple[str, str]],
    ) -> list[bytes | memoryview]:
        resends = 0
        while True:
            connection = await self._connection()
            try:
                return await connection.call(path, parts, deadline, metadata)
            except Unprocessed:
                if resends >= UNPROCESSED_RESENDS:
                    raise
                resends += 1

    def room_made(self) -> None:
        """A stream ended, or a backend allowed more: waiting callers go on."""
        self._room.set()

    def forget(self, connection: BackendConnection) -> None:
        """The connection closed."""
        if connection in self._connections:
            self._connections.remove(connection)
        self._room.set()

    async def _connection(self) -> BackendConnection:
        while True:
            for connection in self._connections:
                if connection.has_room():
                    return connection
            if self._connecting is None:
                if len(self._connections) >= MAX_CONNECTIONS:
                    self._room.clear()
                    await self._room.wait()
                    continue
                if time.monotonic() < self._retry_at:
                    raise ConnectionFailed(
                        f"backend {self.address} unreachable: {self._last_error}"
                    )
                self._connecting = asyncio.ensure_future(self._open())
                self._connecting.add_done_callback(self._opened)
            await asyncio.shield(self._connecting)

    async def _open(self) -> BackendConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                _, connection = await loop.create_connection(
                    lambda: BackendConnection(self), self._host, self._port
                )
                try:
                    # Until its SETTINGS come, the backend's stream limit is
                    # unknown: calls wait for it rather than be refused.
                    await connection.settled.wait()
                except BaseException:
                    connection.close()
                    raise
                if connection.closed:
                    raise ConnectionResetError("closed before its SETTINGS came")
        except (OSError, TimeoutError) as exc:
            self._last_error = str(exc) or type(exc).__name__
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(MAX_BACKOFF_SECONDS, self._backoff * 2)
            raise ConnectionFailed(
                f"cannot connect to backend {self.address}: {self._last_error}"
            ) from exc
        self._backoff = MIN_BACKOFF_SECONDS
        self._retry_at = 0.0
        self._connections.append(connection)
        return connection

    def _opened(self, task: asyncio.Task[BackendConnection]) -> None:
        self._connecting = None
        if not task.cancelled():
            # Retrieved here too: every caller that waited may have gone.
            task.exception()

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        for connection in list(self._connections):
            connection.close()
        self._connections.clear()


async def _joined(parts: list[bytes | memoryview]) -> bytes:
    """The answer message's parts as one bytes object: joined in a thread
    from :data:`JOIN_IN_THREAD_BYTES` up, where ``bytes.join`` copies without
    the GIL, so the loop is not held for the copy."""
    if len(parts) == 1 and isinstance(parts[0], bytes):
        return parts[0]
    if sum(map(len, parts)) < JOIN_IN_THREAD_BYTES:
        return b"".join(parts)
    return await asyncio.get_running_loop().run_in_executor(None, b"".join, parts)


__all__ = ["H2Channel"]
