"""A TCP relay that records what its clients send, to see the bytes a gateway
forwards to its backend's REST port."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

PREDICT = "/tensorflow.serving.PredictionService/Predict"


@dataclass
class Recorder:
    """What the gateways sent through one relay to the backend's REST port,
    one record per connection: the gateway's health and status calls run on
    connections of their own, and bytes of two connections interleaved would
    cut into each other's messages."""

    streams: list[bytearray] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def clear(self) -> None:
        with self.lock:
            for stream in self.streams:
                stream.clear()

    def stream(self) -> bytearray:
        """A new connection's record."""
        with self.lock:
            self.streams.append(bytearray())
            return self.streams[-1]

    def predict_messages(self, path: str = PREDICT) -> list[bytes]:
        """The request messages of the gRPC-Web calls of ``path`` recorded."""
        with self.lock:
            streams = [bytes(stream) for stream in self.streams]
        found = []
        for data in streams:
            start = data.find(b"POST " + path.encode())
            while start >= 0:
                head_end = data.index(b"\r\n\r\n", start) + 4
                head = data[start:head_end].lower()
                length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
                body = data[head_end : head_end + length]
                (size,) = struct.unpack_from(">I", body, 1)
                found.append(body[5 : 5 + size])
                start = data.find(b"POST " + path.encode(), head_end + length)
        return found


@contextlib.contextmanager
def recording_relay(target_port: int) -> Iterator[tuple[int, Recorder]]:
    """A TCP relay on 127.0.0.1 to ``target_port`` that records what its
    clients send: (its port, the record)."""
    recorder = Recorder()
    bound: futures.Future[int] = futures.Future()
    loop = asyncio.new_event_loop()

    async def pipe(
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        record: bytearray | None,
    ) -> None:
        try:
            while data := await reader.read(65536):
                if record is not None:
                    with recorder.lock:
                        record += data
                writer.write(data)
                await writer.drain()
        except OSError:
            pass  # a side went away
        finally:
            writer.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", target_port
        )
        await asyncio.gather(
            pipe(reader, upstream_writer, recorder.stream()),
            pipe(upstream_reader, writer, None),
        )

    async def serve() -> None:
        server = await asyncio.start_server(relay, "127.0.0.1", 0)
        bound.set_result(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),))
    thread.daemon = True
    thread.start()
    try:
        yield bound.result(timeout=10), recorder
    finally:
        for task in asyncio.all_tasks(loop):
            loop.call_soon_threadsafe(task.cancel)
        thread.join(timeout=10)
