"""The access log: JSON lines with the request context, written in batches."""

from __future__ import annotations

import asyncio
import io

import orjson
from gateway.observability.logging import AccessLog
from servekit_protocol.logs import bind_model, bind_request


class CountingStream(io.BytesIO):
    """Remembers how many writes reached it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.writes += 1
        return super().write(data)


def _lines(stream: io.BytesIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_outside_an_event_loop_each_line_is_written_at_once() -> None:
    stream = io.BytesIO()
    log = AccessLog(stream)
    bind_request("rid-1", "rest_v1")
    bind_model("digits", "3")
    log.write("POST /v1/models/digits:predict 200", status=200, duration_ms=1.5)
    [line] = _lines(stream)
    assert line["logger"] == "gateway.access"
    assert line["request_id"] == "rid-1"
    # Both services log the version as a number.
    assert line["model"] == "digits" and line["version"] == 3
    assert line["protocol"] == "rest_v1"
    assert line["status"] == 200 and line["duration_ms"] == 1.5


def test_inside_a_loop_lines_wait_for_the_flush_interval_then_go_in_one_write() -> None:
    stream = CountingStream()
    log = AccessLog(stream, flush_seconds=0.05)

    async def scenario() -> tuple[int, int]:
        for index in range(10):
            bind_request(f"rid-{index}", "grpc")
            log.write("Predict OK", status="OK")
        buffered = len(stream.getvalue())
        await asyncio.sleep(0.2)
        return buffered, len(_lines(stream))

    buffered, written = asyncio.run(scenario())
    assert buffered == 0
    assert written == 10
    assert stream.writes == 1
    assert [line["request_id"] for line in _lines(stream)] == [
        f"rid-{index}" for index in range(10)
    ]


def test_a_full_buffer_is_written_without_waiting() -> None:
    stream = io.BytesIO()
    log = AccessLog(stream, flush_seconds=60.0, max_buffered_bytes=1000)

    async def scenario() -> int:
        bind_request("rid", "rest_v1")
        for _ in range(50):
            log.write("POST /x 200", status=200)
        return len(_lines(stream))

    written = asyncio.run(scenario())
    assert 0 < written < 50
    log.flush()
    assert len(_lines(stream)) == 50


def test_flush_writes_what_is_pending_and_cancels_the_timer() -> None:
    stream = io.BytesIO()
    log = AccessLog(stream, flush_seconds=60.0)

    async def scenario() -> None:
        bind_request("rid", "rest_v1")
        log.write("POST /x 200", status=200)
        assert stream.getvalue() == b""
        log.flush()

    asyncio.run(scenario())
    assert len(_lines(stream)) == 1
    log.flush()
    assert len(_lines(stream)) == 1
