"""Large answers and ``:predict`` bodies cross to the model server's JSON
workers through shared memory segments (``servekit-<pid>-*`` files of
``/dev/shm``): none is left once a call is over, whether it was answered,
refused, or abandoned by its client (a 0.2 s deadline that passes while the
model runs or the answer is written; the unit tests of
``servekit_protocol.segment_answers`` and ``segment_bodies`` cancel a call
while its worker is running, deterministically)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from modelregistry.layout import SERVEKIT_CONFIG_FILE
from servekit_protocol import segments

from tests.security.stack import assert_no_traceback
from tests.security.test_large_grpc import PREDICT
from tests.security.test_loop_stalls import (
    MESSAGE_LIMIT,
    _check_large_answer,
    _small_predict_message,
    publish_line_model,
)
from tests.support.modelserver import ModelServer, model_server

pytestmark = pytest.mark.integration

ROWS = 4 * 1024 * 1024
"""Rows of the large answers: 4 Mi doubles, 32 MiB."""
SETTLE_SECONDS = 30.0
"""Most time the server may take to remove an abandoned call's segments: its
worker finishes the answer first (about 1-2 s for 32 MiB; the margin is for the
shared 2-core runner)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    directory = tmp_path_factory.mktemp("answer-segments")
    registry = directory / "models"
    publish_line_model(registry, "line")
    with model_server(
        [
            f"--model_config_file={registry / SERVEKIT_CONFIG_FILE}",
            f"--grpc_max_message_bytes={MESSAGE_LIMIT}",
        ],
        log_path=directory / "model-server.log",
    ) as running:
        yield running
        assert_no_traceback(running.process)


def _segments_of(pid: int) -> list[str]:
    prefix = f"servekit-{pid}-"
    return [
        name
        for name in os.listdir(segments.default_directory())
        if name.startswith(prefix)
    ]


def _settled(pid: int) -> list[str]:
    deadline = time.monotonic() + SETTLE_SECONDS
    while _segments_of(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _segments_of(pid)


def _answer(server: ModelServer, rows: int, timeout: float) -> bytes:
    options = [("grpc.max_receive_message_length", MESSAGE_LIMIT)]
    with grpc.insecure_channel(server.grpc_target, options=options) as channel:
        answer: bytes = channel.unary_unary(PREDICT)(
            _small_predict_message(rows), timeout=timeout
        )
    return answer


def test_answered_calls_leave_no_segment(server: ModelServer) -> None:
    pid = server.process.pid
    _check_large_answer(_answer(server, ROWS, 120), ROWS)
    body = b'{"instances": [' + b",".join([b"[0.5]"] * (ROWS // 8)) + b"]}"
    answer = httpx.post(
        f"{server.rest_url}/v1/models/line:predict", content=body, timeout=120
    )
    assert answer.status_code == 200, answer.text[:200]
    assert len(answer.json()["predictions"]) == ROWS // 8
    refused = httpx.post(
        f"{server.rest_url}/v1/models/line:predict",
        content=body[:-2] + b"}",
        timeout=120,
    )
    assert refused.status_code == 400, refused.text[:200]
    assert "error" in refused.json()
    assert _settled(pid) == []


def test_an_abandoned_large_answer_leaves_no_segment(server: ModelServer) -> None:
    pid = server.process.pid
    _answer(server, 32 * 1024, 120)  # the workers' imports, once
    with pytest.raises(grpc.RpcError) as raised:
        _answer(server, ROWS, 0.2)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _settled(pid) == []
    # The server answers the next one whole.
    _check_large_answer(_answer(server, ROWS, 120), ROWS)
    assert _settled(pid) == []
    assert Path(f"/proc/{pid}").exists()
