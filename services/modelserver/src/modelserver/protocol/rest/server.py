"""Run the REST app with uvicorn (httptools) on the process's event loop.

The composition root owns the signals and the shutdown order, so uvicorn's own
signal capture is switched off; :meth:`RestServer.stop` stops accepting, lets
in-flight requests finish (up to ``grace`` seconds) and closes the connections.
The listening socket is bound here, before uvicorn starts, so a busy port is an
``OSError`` the caller can report instead of uvicorn's ``sys.exit``.
Connections are held to :class:`~servekit_protocol.http1.ListenerLimits`
(timeouts, header size, connection count).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections.abc import Iterator

import uvicorn
from servekit_protocol.http1 import ListenerLimits, protocol_class

from modelserver.protocol.rest.app import RestApp

logger = logging.getLogger(__name__)

_BACKLOG = 2048


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # SIGTERM/SIGINT are handled once for the REST and gRPC servers together.
        yield


class RestServer:
    """The REST API listening on ``host:port``.

    Args:
        app: The ASGI application.
        host: Address to bind.
        port: TCP port (0 picks a free one; see :attr:`port`).
        grace: Seconds in-flight requests get to finish on :meth:`stop`.
        limits: What a connection may hold and for how long.
    """

    def __init__(
        self,
        app: RestApp,
        *,
        host: str,
        port: int,
        grace: float,
        limits: ListenerLimits | None = None,
    ) -> None:
        limits = limits if limits is not None else ListenerLimits()
        self._host = host
        self._requested_port = port
        self._config = uvicorn.Config(
            app,
            http=protocol_class(limits, "rest"),
            ws="none",
            lifespan="off",
            interface="asgi3",
            access_log=False,
            log_config=None,
            server_header=False,
            proxy_headers=False,
            backlog=_BACKLOG,
            timeout_graceful_shutdown=max(1, math.ceil(grace)),
        )
        self._server = _EmbeddedServer(self._config)
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        if self._socket is None:
            return self._requested_port
        return int(self._socket.getsockname()[1])

    async def start(self) -> None:
        """Bind and start serving; returns once connections are accepted.

        Raises:
            OSError: The address cannot be bound.
        """
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._requested_port))
        except OSError:
            sock.close()
            raise
        sock.set_inheritable(True)
        self._socket = sock
        self._task = asyncio.create_task(
            self._server.serve(sockets=[sock]), name="rest-server"
        )
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the REST server stopped while starting")
            await asyncio.sleep(0.01)
        logger.info(
            "Exporting HTTP/REST API at %s:%d",
            self._host,
            self.port,
            extra={"rest_port": self.port},
        )

    async def stop(self) -> None:
        """Stop accepting, finish in-flight requests, close connections."""
        if self._task is None:
            return
        self._server.should_exit = True
        await self._task
        self._task = None
