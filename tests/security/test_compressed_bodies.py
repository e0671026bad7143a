"""A small compression bomb as an HTTP body (``Content-Encoding: gzip``) against
both services' HTTP ports: a REST ``:predict`` body, a gRPC-Web body and a
``grpc-web-text`` body.

60 KiB of gzip inflate to 60 MiB of zeros. Inflated on the event loop, even in
1 MiB steps with a yield between them, the bomb costs the loop's thread the
whole inflating (1-2 ms a MiB), and every other client of the port waits that
long in all. The servers inflate at most two steps on the loop and the rest in
a thread, as they do a compressed gRPC message (``test_compressed_grpc.py``).

Under a body limit the bomb fits in, the inflated body is refused once parsed
(it is no protobuf message, nor base64 text of one), and the answer costs the
loop little. A REST body of 60 MiB costs the loop about 0.1 s (model server:
searching it for ``"signature_name"``) and 0.05 s (gateway: forwarding it)
whether it came compressed or not (``test_large_json.py`` bounds what large
bodies cost); its inflating is the gRPC-Web body's (the same reader), so REST is
measured here past the limit only: refused with 413 as soon as inflating
passes it. Each case asserts the answer the servers gave before and the CPU the
loop's thread spent on each call.
"""

from __future__ import annotations

import base64
import contextlib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from servekit_protocol import grpcweb

from tests.security.figures import record
from tests.security.stack import (
    PREDICT_PATH,
    Listener,
    loop_cpu_seconds,
    serving_stack,
)

pytestmark = pytest.mark.integration

ROOMY_LIMIT = 64 * 1024 * 1024
"""Both services' body limit in the stack the bombs fit in."""
TIGHT_LIMIT = 56 * 1024 * 1024
"""Both services' body limit in the stack the bombs pass: far enough in that
inflating up to it on the loop is the cost measured."""
BOMB_BYTES = 60 * 1024 * 1024
"""Inflated bytes of each bomb: about 60 KiB of gzip."""
ROUNDS = 5
"""Calls measured a case (after a first one that starts what a first large
body starts: threads, workers)."""
LOOP_CPU_LIMITS = {ROOMY_LIMIT: 0.05, TIGHT_LIMIT: 0.035}
"""Most CPU the event loop's thread may spend on one bomb call, the median of
:data:`ROUNDS` calls, by body limit. Inflated on the loop in 1 MiB steps, under
the limit: 0.13-0.14 s (both services, gRPC-Web and its text form); past the
56 MiB limit: 0.07-0.08 s (every case). With at most two steps there and the
rest in a thread: 0.01-0.03 s (the text body's decoding handed on) and 0.01 s
(load 7-12 on 2 cores). The CPU clock ticks
every 10 ms, and CPU time is what load stretches far less than latency: the
margins are a tick or two above the figures and as far below the old ones."""
GRPC_WEB_PATH = "/tensorflow.serving.PredictionService/Predict"


@dataclass(frozen=True)
class Bomb:
    """One kind of compressed body: where it goes and how it is answered."""

    path: str
    content_type: str
    body: bytes


def _gzip(data: bytes) -> bytes:
    return zlib.compress(data, 9, wbits=zlib.MAX_WBITS | 16)


def _bombs() -> dict[str, Bomb]:
    zeros = bytes(BOMB_BYTES)
    framed = grpcweb.frame(zeros[: BOMB_BYTES - 5])
    # Base64 of zeros is "A"s: a text body as large as the others.
    text = base64.b64encode(grpcweb.frame(zeros[: BOMB_BYTES // 4 * 3 - 5]))
    return {
        "REST": Bomb(PREDICT_PATH, "application/json", _gzip(zeros)),
        "gRPC-Web": Bomb(GRPC_WEB_PATH, "application/grpc-web", _gzip(framed)),
        "gRPC-Web text": Bomb(GRPC_WEB_PATH, "application/grpc-web-text", _gzip(text)),
    }


@pytest.fixture(scope="module")
def bombs() -> dict[str, Bomb]:
    return _bombs()


@contextlib.contextmanager
def _listeners(directory: Path, limit: int) -> Iterator[list[Listener]]:
    with serving_stack(
        directory,
        gateway_flags=[f"--max-body-bytes={limit}"],
        model_server_flags=[f"--grpc_max_message_bytes={limit}"],
    ) as stack:
        yield stack.listeners()


@pytest.fixture(scope="module")
def roomy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Listener]]:
    with _listeners(tmp_path_factory.mktemp("roomy"), ROOMY_LIMIT) as listeners:
        yield listeners


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Listener]]:
    with _listeners(tmp_path_factory.mktemp("tight"), TIGHT_LIMIT) as listeners:
        yield listeners


def _call(listener: Listener, bomb: Bomb) -> httpx.Response:
    return httpx.post(
        listener.url + bomb.path,
        content=bomb.body,
        headers={
            "content-type": bomb.content_type,
            "content-encoding": "gzip",
            **listener.headers,
        },
        timeout=60.0,
    )


def _expected(kind: str, limit: int) -> tuple[int, str]:
    """The answer each case got before the change, as the status and the error
    (REST) or the ``grpc-status`` and ``grpc-message`` (gRPC-Web)."""
    if limit == TIGHT_LIMIT:
        too_large = f"Request body is larger than the limit of {limit} bytes"
        return (413, too_large) if kind == "REST" else (200, f"8 {too_large}")
    if kind == "REST":
        return 400, (
            "JSON Parse error: unexpected character, expected a JSON value: "
            "line 1 column 1 (char 0)"
        )
    return 200, (
        "13 Failed to parse the request: Error parsing message with type "
        "'servekit.tfs.PredictRequest': Wire format was corrupt"
    )


def _answer(answer: httpx.Response) -> tuple[int, str]:
    if "grpc-status" in answer.headers:
        status = answer.headers["grpc-status"]
        return answer.status_code, f"{status} {answer.headers['grpc-message']}"
    error: str = answer.json()["error"]
    return answer.status_code, error


def _check_loop_cpu(
    listener: Listener, bomb: Bomb, expected: tuple[int, str], limit: float
) -> None:
    pid = listener.process.pid
    answers = [_call(listener, bomb)]
    spent = []
    for _ in range(ROUNDS):
        started = loop_cpu_seconds(pid)
        answers.append(_call(listener, bomb))
        spent.append(loop_cpu_seconds(pid) - started)
    spent.sort()
    record("gzip bomb KiB", len(bomb.body) / 1024)
    record("event loop CPU s, gzip bomb (median)", spent[len(spent) // 2])
    record("event loop CPU s, gzip bomb (largest)", spent[-1])
    for answer in answers:
        assert _answer(answer) == expected
    assert spent[len(spent) // 2] < limit, (
        f"the event loop spent {spent} s of CPU on the bomb calls"
    )


@pytest.mark.parametrize("kind", ["gRPC-Web", "gRPC-Web text"])
@pytest.mark.parametrize("index", [0, 1], ids=["model server", "gateway"])
def test_a_bomb_under_the_limit_is_not_inflated_on_the_event_loop(
    roomy: list[Listener], bombs: dict[str, Bomb], kind: str, index: int
) -> None:
    expected = _expected(kind, ROOMY_LIMIT)
    _check_loop_cpu(roomy[index], bombs[kind], expected, LOOP_CPU_LIMITS[ROOMY_LIMIT])


@pytest.mark.parametrize("kind", ["REST", "gRPC-Web", "gRPC-Web text"])
@pytest.mark.parametrize("index", [0, 1], ids=["model server", "gateway"])
def test_a_bomb_past_the_limit_is_not_inflated_on_the_event_loop(
    tight: list[Listener], bombs: dict[str, Bomb], kind: str, index: int
) -> None:
    expected = _expected(kind, TIGHT_LIMIT)
    _check_loop_cpu(tight[index], bombs[kind], expected, LOOP_CPU_LIMITS[TIGHT_LIMIT])
