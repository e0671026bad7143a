"""Large REST bodies read in the model server's JSON workers for something
other than ``:predict``'s arrays: a body's ``signature_name`` (read before its
signature can be looked up) and a ``:classify`` or ``:regress`` body's
examples. From ``--rest_api_json_offload_bytes`` the body reaches the worker
through a shared memory segment (a ``servekit-<pid>-*-body`` file of
``/dev/shm``), not pickled through the pool's pipe by the server's threads.

Two servers serve the same models: one at the default thresholds, one that
reads every body and writes every answer on its event loop. The tests assert
that both answer the same bytes (answers and refusals), that the body's
segment existed while the first worked, that none is left afterwards, and that
no CPU stretch of the first's event loop went over the 50 ms bound of
``test_loop_stalls``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import orjson
import pytest
from servekit_protocol import segments

from tests.security.loopstall import assert_no_stall
from tests.security.paired_servers import Servers, offloading_and_in_place
from tests.security.test_loop_stalls import publish_line_model
from tests.support.compiledmodels import models_config
from tests.support.models import publish_linear_pipeline
from tests.support.modelserver import (
    METRICS_PATH,
    ModelServer,
    write_monitoring_config,
)
from tests.support.pipelines import publish_classifier

pytestmark = pytest.mark.integration

BODY_LIMIT = 64 * 1024 * 1024
"""The REST body limit of both servers (their gRPC message limit)."""
EXAMPLES = 150_000
"""Examples of the large ``:classify``/``:regress`` bodies (about 5 MiB, over
the 1 MiB from which a body is read in a worker)."""
ROWS = 400_000
"""Rows of the large ``:predict`` bodies that name their signature (about
8 MiB)."""
SETTLE_SECONDS = 30.0
"""Most time the server may take to remove a call's segment: it is unlinked in
a thread once the worker has answered (milliseconds; the margin is for the
shared 2-core runner)."""


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    folder = tmp_path_factory.mktemp("body-segments")
    registry = folder / "models"
    publish_line_model(registry, "line")
    publish_classifier(registry, "classifier")
    publish_linear_pipeline(registry, "linear", offset=1.0)
    config = models_config(folder, registry, ("line", "classifier", "linear"))
    common = (
        f"--model_config_file={config}",
        f"--grpc_max_message_bytes={BODY_LIMIT}",
        f"--monitoring_config_file={write_monitoring_config(folder)}",
    )
    in_place = (
        f"--rest_api_json_offload_bytes={2**62}",
        f"--rest_api_json_answer_offload_elements={2**62}",
    )
    with offloading_and_in_place(common, folder, in_place) as servers:
        yield servers


def _segments_of(pid: int) -> list[str]:
    prefix = f"servekit-{pid}-"
    return [
        name
        for name in os.listdir(segments.default_directory())
        if name.startswith(prefix)
    ]


def settled_segments(pid: int) -> list[str]:
    """The segments of ``pid`` left once it has had time to remove them."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while _segments_of(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _segments_of(pid)


def _post(server: ModelServer, path: str, body: bytes) -> httpx.Response:
    return httpx.post(
        f"{server.rest_url}/v1/models/{path}",
        content=body,
        headers={"content-type": "application/json"},
        timeout=120,
    )


def watching_segments(pid: int, suffix: str, call: Callable[[], None]) -> bool:
    """Run ``call`` and say whether a segment of ``pid`` whose name ends with
    ``suffix`` appeared meanwhile (a worker reads a body, or the arrays of an
    answer, of megabytes for tens of milliseconds; the folder is listed every
    millisecond)."""
    seen = threading.Event()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set() and not seen.is_set():
            if any(name.endswith(suffix) for name in _segments_of(pid)):
                seen.set()
            time.sleep(0.001)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        call()
    finally:
        done.set()
        watcher.join()
    return seen.is_set()


def _predict_body(rows: int, signature: object) -> bytes:
    values = np.random.default_rng(3).normal(size=rows).tolist()
    return orjson.dumps(
        {"signature_name": signature, "instances": [[value] for value in values]}
    )


def _examples_body(examples: int, signature: str | None = None) -> bytes:
    rng = np.random.default_rng(5)
    rows = [
        {"a": [float(a)], "b": [float(b)]}
        for a, b in rng.normal(size=(examples, 2)).tolist()
    ]
    document: dict[str, object] = {"examples": rows}
    if signature is not None:
        document["signature_name"] = signature
    return orjson.dumps(document)


def _same_answer(servers: Servers, path: str, body: bytes) -> httpx.Response:
    offloaded = _post(servers.offloading, path, body)
    in_place = _post(servers.in_place, path, body)
    assert offloaded.status_code == in_place.status_code, offloaded.text[:200]
    assert offloaded.headers["content-type"] == in_place.headers["content-type"]
    assert offloaded.content == in_place.content, offloaded.text[:200]
    return offloaded


@pytest.mark.parametrize(
    ("signature", "status"),
    [("serving_default", 200), ("no_such_signature", 400), (7, 400)],
)
def test_a_large_predict_body_naming_its_signature_is_answered_alike(
    servers: Servers, signature: object, status: int
) -> None:
    answer = _same_answer(servers, "line:predict", _predict_body(ROWS, signature))
    assert answer.status_code == status
    if status == 200:
        assert len(answer.json()["predictions"]) == ROWS
    else:
        assert "error" in answer.json()
    assert settled_segments(servers.offloading.process.pid) == []


@pytest.mark.parametrize(
    ("path", "signature"),
    [
        ("classifier:classify", None),
        ("linear:regress", None),
        ("linear:regress", "serving_default"),
        ("linear:regress", "no_such_signature"),
    ],
)
def test_large_examples_bodies_are_answered_alike(
    servers: Servers, path: str, signature: str | None
) -> None:
    answer = _same_answer(servers, path, _examples_body(EXAMPLES, signature))
    if signature == "no_such_signature":
        assert answer.status_code in (400, 404), answer.text[:200]
    else:
        assert answer.status_code == 200, answer.text[:200]
        assert len(answer.json()["results"]) == EXAMPLES
    assert settled_segments(servers.offloading.process.pid) == []


@pytest.mark.parametrize(
    "body",
    [
        b'{"examples": [' + b'{"a": [1.0], "b": [2.0]},' * 100_000 + b"}",
        b'{"examples": ' + b'{"a": [1.0], "b": [2.0]}' * 100_000 + b"}",
        b'{"signature_name": 1, "examples": ['
        + b",".join([b'{"a": [1.0], "b": [2.0]}'] * 100_000)
        + b"]}",
    ],
    ids=["malformed", "not-a-list", "bad-signature-name"],
)
def test_refused_large_examples_bodies_are_refused_alike(
    servers: Servers, body: bytes
) -> None:
    answer = _same_answer(servers, "linear:regress", body)
    assert answer.status_code == 400
    assert "error" in answer.json()
    assert settled_segments(servers.offloading.process.pid) == []


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("line:predict", _predict_body(ROWS, "serving_default")),
        ("classifier:classify", _examples_body(EXAMPLES)),
        ("linear:regress", _examples_body(EXAMPLES)),
    ],
    ids=["predict-signature", "classify", "regress"],
)
def test_a_large_body_goes_through_a_segment_without_stalling_the_loop(
    servers: Servers, path: str, body: bytes
) -> None:
    server = servers.offloading
    pid = server.process.pid
    # The first call of a kind starts what it needs (imports in the workers).
    assert _post(server, path, body).status_code == 200
    answered: list[int] = []

    def call() -> None:
        answered.append(_post(server, path, body).status_code)

    assert watching_segments(
        pid,
        "-body",
        lambda: assert_no_stall(
            server.rest_url + METRICS_PATH, "modelserver", f"REST {path} body", call
        ),
    )
    assert answered == [200]
    assert settled_segments(pid) == []
