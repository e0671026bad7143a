"""Large bodies parsed and large answers written in worker processes
(servekit_protocol.json_codec.offload)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import numpy as np
import pytest
from servekit_protocol import json_codec
from servekit_protocol.errors import InvalidArgument
from servekit_protocol.json_codec.offload import BodyParsers, ParserUnavailable

from tests.support.processes import spawned_workers


def _process_id(body: bytes) -> int:
    del body
    return os.getpid()


def _exit(body: bytes) -> None:
    del body
    os._exit(3)


async def test_bodies_under_the_threshold_are_parsed_in_place() -> None:
    parsers = BodyParsers(threshold_bytes=100)
    try:
        assert await parsers.run(99, _process_id, b"") == os.getpid()
    finally:
        parsers.close()


async def test_larger_bodies_are_parsed_in_a_worker_process() -> None:
    parsers = BodyParsers(threshold_bytes=100, workers=1)
    try:
        assert await parsers.run(100, _process_id, b"") != os.getpid()
        body = b'{"instances": [1.0, 2.0]}'
        specs = {"x": json_codec.TensorSpec("DT_FLOAT", None)}
        parsed = await parsers.run(
            100, json_codec.parse_predict_request, body, specs, None
        )
        assert parsed.inputs["x"].tolist() == [1.0, 2.0]
        # The worker's error comes back as it was raised.
        with pytest.raises(InvalidArgument, match="JSON Parse error"):
            await parsers.run(
                100, json_codec.parse_predict_request, b"{not json", specs, None
            )
    finally:
        parsers.close()


async def test_a_dead_worker_is_unavailable_and_the_next_call_gets_a_new_one() -> None:
    parsers = BodyParsers(threshold_bytes=1, workers=1)
    try:
        with pytest.raises(ParserUnavailable) as raised:
            await parsers.run(10, _exit, b"")
        assert raised.value.status == 503
        assert await parsers.run(10, _process_id, b"") != os.getpid()
    finally:
        parsers.close()


async def test_large_answers_are_written_in_a_worker_process() -> None:
    parsers = BodyParsers(answer_threshold_elements=1000, workers=1)
    try:
        assert await parsers.write_answer(999, _process_id, b"") == os.getpid()
        assert await parsers.write_answer(1000, _process_id, b"") != os.getpid()
        outputs = {"y": np.arange(3.0), "z": np.array([1, 2, 3])}
        rows = json_codec.RequestFormat.ROW
        written = await parsers.write_answer(
            json_codec.output_elements(outputs),
            json_codec.format_predict_response,
            outputs,
            rows,
        )
        assert written == json_codec.format_predict_response(outputs, rows)
        with pytest.raises(InvalidArgument, match="inconsistent batch size"):
            await parsers.write_answer(
                1000,
                json_codec.format_predict_response,
                {"y": np.arange(3.0), "z": np.arange(2.0)},
                rows,
            )
    finally:
        parsers.close()


async def test_start_launches_the_workers_without_waiting_for_them() -> None:
    before = spawned_workers(os.getpid())
    parsers = BodyParsers(workers=2)
    try:
        started = time.perf_counter()
        parsers.start()
        # Launching is a fork and exec each; importing happens in the workers.
        assert time.perf_counter() - started < 1.0
        deadline = time.monotonic() + 30
        while len(spawned_workers(os.getpid()) - before) < 2:
            assert time.monotonic() < deadline, "the workers did not start"
            await asyncio.sleep(0.05)
        # The first body finds them running: no new process is needed.
        launched = spawned_workers(os.getpid()) - before
        await parsers.run(parsers.threshold_bytes, _process_id, b"")
        assert launched <= spawned_workers(os.getpid())
    finally:
        parsers.close()


async def test_workers_leave_ctrl_c_to_the_server() -> None:
    # A terminal's Ctrl-C reaches the whole process group; the server stops
    # its workers itself.
    parsers = BodyParsers(threshold_bytes=1, workers=1)
    try:
        handler = await parsers.run(1, signal.getsignal, signal.SIGINT)
        assert handler == signal.SIG_IGN
    finally:
        parsers.close()


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        BodyParsers(threshold_bytes=0)
    with pytest.raises(ValueError, match="positive"):
        BodyParsers(answer_threshold_elements=0)
