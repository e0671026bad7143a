"""The JSON log line and request context both services write."""

from __future__ import annotations

import contextvars
import io
import logging

import orjson
from servekit_protocol.logs import (
    MAX_REQUEST_ID_LENGTH,
    JsonFormatter,
    RequestContextFilter,
    accept_request_id,
    bind_model,
    bind_request,
    bind_request_id,
    context_fields,
    new_request_id,
)


def test_sane_caller_ids_are_kept_and_others_replaced() -> None:
    assert accept_request_id("abc-123") == "abc-123"
    assert accept_request_id(b"abc-123") == "abc-123"
    for insane in (None, "", "x" * (MAX_REQUEST_ID_LENGTH + 1), "é", "a\nb"):
        replaced = accept_request_id(insane)
        assert len(replaced) == 32 and int(replaced, 16) >= 0
    assert new_request_id() != new_request_id()


def test_a_line_carries_the_bound_context_and_extras() -> None:
    def run() -> dict[str, object]:
        bind_request_id("rid-1", "grpc")
        bind_model("digits", "3")
        record = logging.LogRecord("svc", logging.INFO, "f", 1, "hi %s", ("x",), None)
        record.status = 404
        line: dict[str, object] = orjson.loads(JsonFormatter().format(record))
        return line

    line = contextvars.copy_context().run(run)
    assert line["message"] == "hi x"
    assert (line["request_id"], line["protocol"]) == ("rid-1", "grpc")
    # A version is a number in every line, whichever service bound it.
    assert (line["model"], line["version"]) == ("digits", 3)
    assert line["status"] == 404
    assert set(line) == {
        "time",
        "level",
        "logger",
        "message",
        "request_id",
        "model",
        "version",
        "protocol",
        "status",
    }


def test_a_new_request_forgets_the_previous_model() -> None:
    def run() -> dict[str, str | int]:
        bind_request("one", "rest")
        bind_model("m", 2)
        bind_request("two", "rest")
        return context_fields()

    assert contextvars.copy_context().run(run) == {
        "request_id": "two",
        "protocol": "rest",
    }


def test_the_filter_keeps_the_context_for_later_formatting() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestContextFilter())
    captured: list[logging.LogRecord] = []
    handler.emit = captured.append  # type: ignore[method-assign]

    def run() -> None:
        bind_request("rid-9", "rest")
        record = logging.LogRecord("svc", logging.INFO, "f", 1, "m", None, None)
        handler.handle(record)

    contextvars.copy_context().run(run)
    line = orjson.loads(JsonFormatter().format(captured[0]))
    assert line["request_id"] == "rid-9"
