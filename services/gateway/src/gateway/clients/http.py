"""A lean HTTP/1.1 client for forwarding TF Serving REST calls to a backend.

Keep-alive connections per backend address, one request at a time on each (no
pipelining), responses parsed by httptools (uvicorn's parser). It does only what
forwarding needs: a request line, a few headers and a body out; the status, the
headers and the body back. A general client (httpx, aiohttp) costs several times
more CPU per call, which is the gateway's added latency at one client.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import cast

import httptools
import orjson
from servekit_protocol.buffers import JOIN_IN_THREAD_BYTES, join_chunks

MAX_IDLE_CONNECTIONS = 64
_JOINED_BODY_BYTES = 65536
"""Bodies under this go out in one write with the head."""

Body = bytes | tuple[bytes | memoryview, ...]
"""A request body: its bytes, or its parts in order (sent without joining)."""


class ConnectionFailed(Exception):
    """The backend could not be reached, or it closed the connection before
    answering: nothing was processed as far as the client can tell."""


class Refused(ConnectionFailed):
    """The backend answered 503: TF Serving's UNAVAILABLE over REST (a full batch
    queue, a server shutting down). Nothing was processed, so it is retried like
    the gRPC status."""


class AnswerTooLarge(Exception):
    """The backend's answer is over the client's ``max_answer_bytes``: it
    was not read further, and its connection is closed."""


def error_text(body: bytes) -> str:
    """The message of a TF Serving error body (`{"error": ...}`), else its start."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        return cast(str, parsed["error"])
    return body[:200].decode("utf-8", "replace")


@dataclass(slots=True)
class HttpAnswer:
    status: int
    body: bytes
    headers: dict[bytes, bytes] = field(default_factory=dict)
    """Lower-cased header names; the last value of a repeated header."""
    chunks: list[bytes] = field(default_factory=list)
    """The body as received, in order, where it was left unjoined (see
    `HttpBackend.request`); ``body`` is then empty."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; `exchange` sends a request and awaits its answer."""

    def __init__(self, max_answer_bytes: int) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[HttpAnswer] | None = None
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._received = 0
        self._max_answer_bytes = max_answer_bytes
        self._refused = False
        self.reusable = True

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionFailed(f"malformed answer from the backend: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self._fail(ConnectionFailed(f"the backend closed the connection: {exc}"))

    # -- httptools callbacks -----------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        declared = self._headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self._max_answer_bytes:
            self._refuse(f"declared {int(declared)} bytes")

    def on_body(self, body: bytes) -> None:
        if self._refused:
            # The rest of this read is dropped.
            return
        self._received += len(body)
        if self._received > self._max_answer_bytes:
            self._refuse(f"{self._received} bytes received")
            return
        self._body.append(body)

    def _refuse(self, seen: str) -> None:
        """Stop at an answer over the limit: a backend sending without end
        (or announcing more than the limit) would otherwise be buffered until
        the call's deadline, at loopback speed."""
        self._refused = True
        self._body = []
        self._fail(
            AnswerTooLarge(
                f"the backend's answer is over the gateway's limit of "
                f"{self._max_answer_bytes} bytes ({seen})"
            )
        )
        self.close()

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if sum(map(len, self._body)) < JOIN_IN_THREAD_BYTES:
            answer = HttpAnswer(status, b"".join(self._body), self._headers)
        else:
            # Joining is a copy into fresh pages (some 45 ms of CPU for 64
            # MiB): the caller makes it in a thread, or copies only what it
            # needs.
            answer = HttpAnswer(status, b"", self._headers, self._body)
        if not self._parser.should_keep_alive():
            self.reusable = False
        self._headers = {}
        self._body = []
        self._received = 0
        future, self._answer = self._answer, None
        if future is not None and not future.done():
            future.set_result(answer)

    # -- use ---------------------------------------------------------------------

    def _fail(self, exc: Exception) -> None:
        future, self._answer = self._answer, None
        if future is not None and not future.done():
            future.set_exception(exc)

    async def exchange(self, head: bytes, body: Body) -> HttpAnswer:
        assert self.transport is not None
        future: asyncio.Future[HttpAnswer] = asyncio.get_running_loop().create_future()
        self._answer = future
        if isinstance(body, bytes) and len(body) < _JOINED_BODY_BYTES:
            self.transport.write(head + body)
        else:
            self.transport.write(head)
            for part in (body,) if isinstance(body, bytes) else body:
                self.transport.write(part)
        return await future

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


class HttpBackend:
    """Keep-alive connections to one `host:port`; an answer body over
    ``max_answer_bytes`` raises `AnswerTooLarge`."""

    def __init__(self, address: str, max_answer_bytes: int) -> None:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"not a host:port address: {address!r}")
        self.address = address
        self._host = host.strip("[]")
        self._port = int(port)
        self._host_header = address.encode("latin-1")
        self._idle: list[_Connection] = []
        self._max_answer_bytes = max_answer_bytes

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(
                lambda: _Connection(self._max_answer_bytes), self._host, self._port
            )
        except OSError as exc:
            raise ConnectionFailed(
                f"cannot connect to {self.address}: {exc.strerror or exc}"
            ) from exc
        return connection

    async def request(
        self,
        method: str,
        target: str,
        body: Body = b"",
        headers: tuple[tuple[str, str], ...] = (),
        *,
        joined: bool = True,
    ) -> HttpAnswer:
        """Send one request and return the whole answer.

        A connection that went stale while idle (the backend restarted or closed
        it) is replaced once; a fresh connection that fails raises.

        A body of :data:`~servekit_protocol.buffers.JOIN_IN_THREAD_BYTES` or
        more is joined in a thread, or with ``joined=False`` left as the chunks
        received (`HttpAnswer.chunks`).

        Raises:
            ConnectionFailed: no answer came back.
            AnswerTooLarge: the answer's body is over ``max_answer_bytes``.
        """
        answer = await self._answer(self._head(method, target, body, headers), body)
        if joined and answer.chunks:
            chunks, answer.chunks = answer.chunks, []
            answer.body = await join_chunks(chunks, sum(map(len, chunks)))
        return answer

    async def _answer(self, head: bytes, body: Body) -> HttpAnswer:
        while self._idle:
            connection = self._idle.pop()
            if not connection.reusable:
                continue
            try:
                answer = await self._exchange(connection, head, body)
            except ConnectionFailed:
                continue
            return answer
        connection = await self._connect()
        return await self._exchange(connection, head, body)

    async def _exchange(
        self, connection: _Connection, head: bytes, body: Body
    ) -> HttpAnswer:
        try:
            answer = await connection.exchange(head, body)
        except BaseException:
            # Cancelled mid-exchange (deadline) or broken: the connection's state
            # is unknown, so it is never reused.
            connection.close()
            raise
        if connection.reusable and len(self._idle) < MAX_IDLE_CONNECTIONS:
            self._idle.append(connection)
        else:
            connection.close()
        return answer

    def _head(
        self,
        method: str,
        target: str,
        body: Body,
        headers: tuple[tuple[str, str], ...],
    ) -> bytes:
        size = len(body) if isinstance(body, bytes) else sum(map(len, body))
        lines = [
            f"{method} {target} HTTP/1.1".encode("latin-1"),
            b"host: " + self._host_header,
            b"content-length: %d" % size,
        ]
        lines.extend(f"{name}: {value}".encode("latin-1") for name, value in headers)
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
