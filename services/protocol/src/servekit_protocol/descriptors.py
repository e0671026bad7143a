"""A pipe's end handed to a worker process by descriptor passing, and taken
back when the worker never comes for it.

:mod:`multiprocessing`'s resource sharer (``reduction.DupFd``) keeps the
duplicate it registers until some process asks for it: one whose worker died
first, or never needed its pipe (a refused request sends no arrays back),
stays open in the server for good, one descriptor a call. Here the server
keeps its duplicates in a table of its own, hands each to the first process
that asks with its token (``socket.send_fds`` over a Unix socket it listens
on), and :meth:`Descriptors.drop` closes the one nobody took once its call is
over. A worker sending arrays back through a pipe it made keeps the pipe's
read end the same way, in a table of the call's own that its writer closes
(:func:`~servekit_protocol.messagepipe.send_back`). One thread serves every
connection as its bytes come, each given a few seconds to send its token: a
local process that connects and sends nothing (the socket is abstract, so any
local process can reach it) holds up no worker.
"""

from __future__ import annotations

import os
import secrets
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field

_TOKEN_BYTES = 16
"""A handle's token: unguessable, so only the worker handed the handle (or the
server) can take its descriptor from the socket (abstract, so no file
permissions guard it)."""
_TAKE_SECONDS = 30.0
"""Most a worker waits for the server to answer: the server's thread answers
at once, unless the server is gone."""
_TOKEN_SECONDS = 5.0
"""Most time an asker has, once connected, to send its whole token: a worker
sends it with its connection (microseconds); the margin is for a loaded
2-core machine. An asker silent that long is dropped; meanwhile it delays no
other, as every connection is served by one loop as its bytes come."""
_ASKERS = 256
"""Most connections waiting for their tokens at once: past it the oldest is
dropped, so that a local process opening connections and sending nothing
holds a bounded number of the server's descriptors."""
_CONNECT_RETRY_SECONDS = 0.01
"""Pause before a worker connects again when the listener's backlog is
full."""
_ACCEPT_RETRY_SECONDS = 0.05
"""Pause before accepting again when the server is out of descriptors (the
listener stays readable, so the loop would spin)."""


@dataclass(frozen=True, slots=True)
class SharedDescriptor:
    """What a worker is handed for a descriptor (pickled as plain data).

    Attributes:
        address: The server's socket.
        token: Names the descriptor there.
    """

    address: str
    token: bytes

    def detach(self) -> int:
        """The descriptor, taken from the server (the caller closes it).

        Raises:
            OSError: The server is gone, or the descriptor was dropped.
        """
        deadline = time.monotonic() + _TAKE_SECONDS
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(_TAKE_SECONDS)
            while True:
                try:
                    conn.connect(self.address)
                    break
                except BlockingIOError:
                    # The listener's backlog is full (a burst of askers): a
                    # Unix socket with a timeout is refused at once, not
                    # made to wait.
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(_CONNECT_RETRY_SECONDS)
            conn.sendall(self.token)
            _, fds, _, _ = socket.recv_fds(conn, 1, 1)
        if not fds:
            raise OSError("the descriptor was dropped before it was taken")
        return fds[0]


class Descriptors:
    """The server's side: duplicates waiting for their workers, and the
    thread handing them out (started with the first, stopped by
    :meth:`close`; a later :meth:`share` starts another).

    Made with the workers it serves
    (:class:`~servekit_protocol.json_codec.BodyParsers`) and handed to each
    pipe a call opens.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[bytes, int] = {}
        self._address = ""
        self._wake: socket.socket | None = None
        self._server: threading.Thread | None = None
        self._pid = os.getpid()

    def share(self, descriptor: int) -> SharedDescriptor:
        """A handle on a duplicate of ``descriptor`` (the caller keeps its own).

        Raises:
            OSError: No duplicate, or no socket to hand it out.
        """
        token = secrets.token_bytes(_TOKEN_BYTES)
        with self._lock:
            address = self._listening()
            self._waiting[token] = os.dup(descriptor)
        return SharedDescriptor(address, token)

    def drop(self, handle: SharedDescriptor) -> None:
        """Close the duplicate if nobody took it (its call is over)."""
        with self._lock:
            descriptor = self._waiting.pop(handle.token, None)
        if descriptor is not None:
            os.close(descriptor)

    def waiting(self) -> int:
        """How many duplicates wait for a worker."""
        with self._lock:
            return len(self._waiting)

    def close(self) -> None:
        """Close the duplicates still waiting (a worker asking later is told
        they were dropped, or finds no socket), the socket and its thread."""
        with self._lock:
            waiting, self._waiting = self._waiting, {}
            wake, self._wake = self._wake, None
            server, self._server = self._server, None
        for descriptor in waiting.values():
            os.close(descriptor)
        if wake is not None:
            # Its peer turns readable: the thread closes the socket and ends.
            wake.close()
        if server is not None:
            server.join()

    def _listening(self) -> str:
        if self._pid != os.getpid():
            # A forked child: its parent's thread does not run here, and the
            # socket is the parent's.
            self._waiting, self._wake, self._server = {}, None, None
            self._pid = os.getpid()
        if self._server is None:
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            wake, woken = socket.socketpair()
            try:
                # Linux's abstract namespace: no file to remove, none left
                # behind by a killed server.
                address = f"\0servekit-descriptors-{os.getpid()}-{secrets.token_hex(8)}"
                listener.bind(address)
                listener.listen(64)
                listener.setblocking(False)
                server = threading.Thread(
                    target=self._serve,
                    args=(listener, woken),
                    name="descriptors",
                    daemon=True,
                )
                server.start()
            except BaseException:
                for end in (listener, wake, woken):
                    end.close()
                raise
            self._address, self._wake, self._server = address, wake, server
        return self._address

    def _serve(self, listener: socket.socket, woken: socket.socket) -> None:
        # One loop for every connection, each read as its bytes come: an
        # asker that sends nothing (or part of a token) holds up no other.
        askers: dict[socket.socket, _Asker] = {}
        with selectors.DefaultSelector() as selector, listener, woken:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(woken, selectors.EVENT_READ)
            try:
                while True:
                    timeout = None
                    if askers:
                        # In order of arrival, so the first is due first.
                        first = next(iter(askers.values()))
                        timeout = max(0.0, first.deadline - time.monotonic())
                    for key, _ in selector.select(timeout):
                        if key.fileobj is woken:
                            return
                        if key.fileobj is listener:
                            self._accept(listener, selector, askers)
                        else:
                            conn = key.fileobj
                            assert isinstance(conn, socket.socket)
                            # None: dropped by an accept of this round.
                            asker = askers.get(conn)
                            if asker is not None and self._read(conn, asker):
                                _forget(conn, selector, askers)
                    now = time.monotonic()
                    while askers:
                        conn, asker = next(iter(askers.items()))
                        if asker.deadline > now:
                            break
                        _forget(conn, selector, askers)
            finally:
                for conn in list(askers):
                    _forget(conn, selector, askers)

    def _accept(
        self,
        listener: socket.socket,
        selector: selectors.BaseSelector,
        askers: dict[socket.socket, _Asker],
    ) -> None:
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            # Out of descriptors: the calls asking fail on their own (their
            # timeout) unless some close meanwhile.
            time.sleep(_ACCEPT_RETRY_SECONDS)
            return
        conn.setblocking(False)
        if len(askers) >= _ASKERS:
            _forget(next(iter(askers)), selector, askers)
        askers[conn] = _Asker(time.monotonic() + _TOKEN_SECONDS)
        selector.register(conn, selectors.EVENT_READ)

    def _read(self, conn: socket.socket, asker: _Asker) -> bool:
        """Read what ``conn`` sent; answer it once its token is whole.
        Whether the connection is done with."""
        try:
            part = conn.recv(_TOKEN_BYTES - len(asker.token))
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        if not part:
            return True
        asker.token += part
        if len(asker.token) < _TOKEN_BYTES:
            return False
        with self._lock:
            descriptor = self._waiting.pop(bytes(asker.token), None)
        try:
            # One byte on a fresh connection: the socket's buffer has room.
            if descriptor is None:
                conn.send(b"-")
            else:
                socket.send_fds(conn, [b"+"], [descriptor])
        except OSError:
            # The asker went away: its call fails on its own.
            pass
        finally:
            if descriptor is not None:
                os.close(descriptor)
        return True


@dataclass(slots=True)
class _Asker:
    """A connection's token so far, and when it must be whole."""

    deadline: float
    token: bytearray = field(default_factory=bytearray)


def _forget(
    conn: socket.socket,
    selector: selectors.BaseSelector,
    askers: dict[socket.socket, _Asker],
) -> None:
    selector.unregister(conn)
    del askers[conn]
    conn.close()
