"""The gRPC server: grpc.aio's registration and life cycle over HTTP/2 connections.

grpc.aio hands each event of a call from its C core's poller thread to the event
loop through a socket, four times for a unary call. This server runs in the
loop's own thread, with ``h2`` for HTTP/2, and serves the same servicers: unary
and server-streaming methods (health ``Watch``), deadlines (``grpc-timeout``),
metadata (``-bin`` values base64), gzip- or deflate-compressed requests, status
and message in trailers, message size limits, and a graceful stop (GOAWAY, then
in-flight calls get ``grace`` seconds). Handlers are registered as on
``grpc.aio.server`` (``add_generic_rpc_handlers``,
``add_registered_method_handlers``), so servicers and their ``add_*_to_server``
functions are unchanged. Client-streaming methods answer UNIMPLEMENTED: none of
the services has one. Answers are never compressed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import time
from collections.abc import Iterable

import grpc

from servekit_protocol.grpc_server.calls import Authenticate, OffloadedDecoder
from servekit_protocol.grpc_server.connection import Http2Connection
from servekit_protocol.grpc_server.limits import Http2Limits

logger = logging.getLogger(__name__)

UNLIMITED_BYTES = 2**31 - 1
"""The size limit that stands for none: no message reaches it."""
_REFUSAL_LOG_SECONDS = 1.0
"""Refused connections are logged at most this often (with their count)."""
_BACKLOG = 2048
"""Handshaken connections the kernel holds for accept, as uvicorn's listeners."""


class GrpcServer:
    """A gRPC server with ``grpc.aio.server``'s registration and life cycle calls.

    Args:
        max_receive_bytes: Largest request message (RESOURCE_EXHAUSTED beyond);
            negative for none, as grpc's -1.
        max_send_bytes: Largest answer message, likewise.
        limits: The HTTP/2 limits (defaults: :class:`Http2Limits`'s).
        authenticate: Checks a call's path, metadata and peer before any of
            its body is kept; raises ``Aborted`` to refuse it.
    """

    def __init__(
        self,
        *,
        max_receive_bytes: int,
        max_send_bytes: int,
        limits: Http2Limits | None = None,
        authenticate: Authenticate | None = None,
    ) -> None:
        self.max_receive_bytes = (
            max_receive_bytes if max_receive_bytes >= 0 else UNLIMITED_BYTES
        )
        self.max_send_bytes = max_send_bytes if max_send_bytes >= 0 else UNLIMITED_BYTES
        self.limits = limits or Http2Limits()
        self.authenticate = authenticate
        self.connections: set[Http2Connection] = set()
        self.generic: list[grpc.GenericRpcHandler] = []
        self.registered: dict[str, grpc.RpcMethodHandler] = {}
        self.offloaded: dict[str, OffloadedDecoder] = {}
        self._sockets: list[socket.socket] = []
        self._servers: list[asyncio.Server] = []
        self._timers: asyncio.Task[None] | None = None
        self._refused = 0
        self._refusal_logged = 0.0

    def add_generic_rpc_handlers(
        self, handlers: Iterable[grpc.GenericRpcHandler]
    ) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        for name, handler in handlers.items():
            self.registered[f"/{service}/{name}"] = handler

    def offload_decoding(self, method: str, decoder: OffloadedDecoder) -> None:
        """Decode the requests of ``method`` (its path, ``/package.Service/Name``)
        from ``decoder.threshold_bytes`` up with ``decoder`` rather than the
        method's deserializer."""
        self.offloaded[method] = decoder

    def add_insecure_port(self, address: str) -> int:
        """Bind ``host:port`` (``[v6]:port``) or ``unix:path``; the port bound (0
        for a UNIX socket).

        Raises:
            OSError: The address cannot be bound.
        """
        if address.startswith("unix:"):
            path = address[len("unix:") :]
            # A socket file left by an earlier server is replaced, as grpc does.
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.stat(path).st_mode):
                    os.unlink(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(path)
            except OSError:
                sock.close()
                raise
            self._sockets.append(sock)
            return 0
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host or "0.0.0.0", int(port)))
        except OSError:
            sock.close()
            raise
        self._sockets.append(sock)
        return int(sock.getsockname()[1])

    async def start(self) -> None:
        """Accept connections on every bound address."""
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            # The loop listens again with its own backlog (100 by default), so
            # the backlog is given to it rather than to sock.listen.
            if sock.family == socket.AF_UNIX:
                server = await loop.create_unix_server(
                    lambda: Http2Connection(self), sock=sock, backlog=_BACKLOG
                )
            else:
                server = await loop.create_server(
                    lambda: Http2Connection(self), sock=sock, backlog=_BACKLOG
                )
            self._servers.append(server)
        self._timers = loop.create_task(self._run_timers())

    def admit(self, connection: Http2Connection) -> bool:
        """Count a new connection in, or refuse it over ``max_connections``."""
        if len(self.connections) < self.limits.max_connections:
            self.connections.add(connection)
            return True
        self._refused += 1
        now = time.monotonic()
        if now - self._refusal_logged >= _REFUSAL_LOG_SECONDS:
            logger.warning(
                "gRPC connections refused: %d at the limit of %d",
                self._refused,
                self.limits.max_connections,
            )
            self._refusal_logged = now
            self._refused = 0
        return False

    def forget(self, connection: Http2Connection) -> None:
        """A connection is gone."""
        self.connections.discard(connection)

    async def _run_timers(self) -> None:
        limits = self.limits
        shortest = min(
            limits.handshake_timeout_seconds,
            limits.idle_timeout_seconds,
            limits.header_read_timeout_seconds,
            limits.body_read_timeout_seconds,
            limits.send_stall_timeout_seconds,
        )
        # One timer for every connection; a deadline is late by a tick at most.
        tick = min(1.0, shortest / 4)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for connection in list(self.connections):
                connection.check_timers(now)

    async def stop(self, grace: float | None) -> None:
        """Stop accepting, let calls under way finish for ``grace`` seconds, then
        cancel the rest and close every connection."""
        for server in self._servers:
            server.close()
        if self._timers is not None:
            self._timers.cancel()
        for connection in list(self.connections):
            connection.go_away()
        calls = [task for connection in self.connections for task in connection.calls()]
        if calls and grace:
            await asyncio.wait(calls, timeout=grace)
        for task in calls:
            task.cancel()
        for connection in list(self.connections):
            connection.close()
        self._servers.clear()
