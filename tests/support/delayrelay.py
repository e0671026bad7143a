"""A TCP relay that delays what a server sends back, for tests of overlapping calls.

:func:`delaying_relay` listens on 127.0.0.1 and passes every connection's bytes
through to a target: client to server at once, server to client each chunk
``delay_seconds`` after it arrived, in order (but for the server's first chunk,
its connection preface). So every call through it lasts at
least that long whatever the machine's load, and calls sent while one is in
flight overlap it: what a slow model gives a test, with the model left as it is.
It runs its own event loop on a thread and is stopped on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from concurrent import futures

CHUNK = 65536


async def _forward(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    delay: float,
    *,
    first_at_once: bool = False,
) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            await asyncio.sleep(max(0.0, due - loop.time()))
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        if first_at_once and (data := await reader.read(CHUNK)):
            queue.put_nowait((0.0, data))
        while data := await reader.read(CHUNK):
            queue.put_nowait((loop.time() + delay, data))
    finally:
        queue.put_nowait((0.0, b""))
        try:
            await sender
        except (OSError, asyncio.CancelledError):
            pass  # the peer went away, or the relay is stopping
        finally:
            writer.close()


async def _serve(
    target: tuple[str, int], delay: float, bound: futures.Future[int]
) -> None:
    async def relay(
        client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*target)
        except OSError:
            client_writer.close()
            return
        # Stopping cancels this task; it ends normally so that asyncio's stream
        # server, which asks a finished handler for its exception, gets none.
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await asyncio.gather(
                _forward(client_reader, server_writer, 0.0),
                # The server's first bytes (its HTTP/2 SETTINGS) pass at once: a
                # gRPC client gives up a connection whose SETTINGS come later than
                # its connect timeout, which the gateway keeps near 1 s.
                _forward(server_reader, client_writer, delay, first_at_once=True),
            )

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    bound.set_result(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


async def _cancel_all() -> None:
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.contextmanager
def delaying_relay(target: str, delay_seconds: float) -> Iterator[str]:
    """Relay to ``target`` (host:port), answers delayed; yields its own host:port."""
    host, port = target.rsplit(":", 1)
    loop = asyncio.new_event_loop()
    bound: futures.Future[int] = futures.Future()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(
        _serve((host, int(port)), delay_seconds, bound), loop
    )
    try:
        yield f"127.0.0.1:{bound.result(timeout=10)}"
    finally:
        asyncio.run_coroutine_threadsafe(_cancel_all(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
