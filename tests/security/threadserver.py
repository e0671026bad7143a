"""A small TCP server for the tests' stand-in backends: an asyncio protocol
served on 127.0.0.1 from an event loop in a thread of its own, so that a test's
blocking clients and the gateway under test can call it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def served_in_a_thread(
    protocol: Callable[[], asyncio.Protocol], what: str
) -> Iterator[int]:
    """The port ``protocol``'s connections are served on, until the block ends;
    ``what`` names the server in the failure to start."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stopped = asyncio.Event()
    port = 0

    async def serve() -> None:
        nonlocal port
        server = await loop.create_server(protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        started.set()
        async with server:
            await stopped.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),))
    thread.start()
    try:
        assert started.wait(30), f"{what} did not start"
        yield port
    finally:
        loop.call_soon_threadsafe(stopped.set)
        thread.join(30)
        loop.close()
