"""``grpc-web-text`` request bodies decoded from base64 as their chunks arrive.

Kept until the body ended, the received chunks of a 32 MiB base64 body are
32 MiB of memory the event loop's thread writes as it receives them: on a
process's first such bodies, fresh pages, about 7,400 page faults (the kernel
zeroing each page on the loop's thread). :class:`TextBody` hands the chunks to
a worker thread as they arrive, a run of :data:`RUN_BYTES` at a time, where
they are decoded (:class:`~servekit_protocol.grpcweb.TextDecoder`) and freed,
so the loop receives each next chunk into memory it has used before. While the
worker is behind by :data:`HELD_BYTES`, the reader waits for it, which stops
reading from the client (the HTTP server's flow control) instead of holding
more.

The runs are small on purpose: glibc gives the top of its heap back to the
system once more than its trim threshold (about 512 KiB once large blocks
were freed) lies free there, and the next chunks then fault the same pages in
again. Measured on a fresh model server's first 32 MiB body (loop-thread page
faults): runs of 256 KiB with 1 MiB held 1,492-1,742; 256/256 KiB 211;
128/128 KiB 150; 64/128 KiB 87; 64/64 KiB 0-86; its loop's CPU on the call
0.04-0.08 s in every case.

A body that is not base64 keeps its error until :meth:`TextBody.decoded`: the
body is still read to its end (so a body over the size limit answers that
limit's error, as before), and the call's other checks come first.
"""

from __future__ import annotations

import asyncio

from servekit_protocol import grpcweb
from servekit_protocol.errors import InvalidArgument

RUN_BYTES = 64 * 1024
"""Received bytes handed to the worker at once: a thread hand-off costs the
loop tens of microseconds, so a 32 MiB body takes about 500 of them."""
HELD_BYTES = 128 * 1024
"""Received bytes the loop may hold beside the worker's run before it waits
for the worker (see the module's note on the heap's trim threshold)."""


class TextBody:
    """A ``grpc-web-text`` body, decoded in a worker thread while it is read.

    Add each received chunk with :meth:`add` (awaiting it is what holds the
    reader back while the worker is behind), then take the bytes with
    :meth:`decoded`. A body under :data:`grpcweb.TEXT_IN_THREAD_BYTES` that
    never made a whole run is decoded on the loop, as before: a hand-off would
    cost more.
    """

    def __init__(self) -> None:
        self._decoder = grpcweb.TextDecoder()
        self._waiting: list[bytes] = []
        self._waiting_bytes = 0
        self._run: asyncio.Future[bytes | None] | None = None
        self._handed_off = False
        self._error: InvalidArgument | None = None

    async def add(self, chunk: bytes) -> None:
        """Take one received chunk of the body."""
        if not chunk:
            return
        self._waiting.append(chunk)
        self._waiting_bytes += len(chunk)
        if self._run is not None:
            if not self._run.done() and self._waiting_bytes < HELD_BYTES:
                return
            await self._run
            self._run = None
        if self._waiting_bytes >= RUN_BYTES:
            self._run = asyncio.get_running_loop().run_in_executor(
                None, self._decode, self._take_waiting(), False
            )
            self._handed_off = True

    async def decoded(self) -> bytes:
        """The decoded body, once every chunk was added.

        Raises:
            InvalidArgument: not base64.
        """
        if self._run is not None:
            await self._run
            self._run = None
        chunks = self._take_waiting()
        if self._handed_off or sum(map(len, chunks)) >= grpcweb.TEXT_IN_THREAD_BYTES:
            decoded = await asyncio.get_running_loop().run_in_executor(
                None, self._decode, chunks, True
            )
        else:
            decoded = self._decode(chunks, True)
        if self._error is not None:
            raise self._error
        assert decoded is not None
        return decoded

    def _take_waiting(self) -> list[bytes]:
        chunks, self._waiting, self._waiting_bytes = self._waiting, [], 0
        return chunks

    def _decode(self, chunks: list[bytes], final: bool) -> bytes | None:
        # In the worker (one run at a time), or on the loop for a small body.
        try:
            if self._error is None:
                for chunk in chunks:
                    self._decoder.add(chunk)
                if final:
                    return self._decoder.finish()
        except InvalidArgument as exc:
            self._error = exc
        finally:
            # The chunks are freed here, in the worker, as soon as decoded.
            chunks.clear()
        return None
