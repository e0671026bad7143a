"""Large ``:classify`` and ``:regress`` answers of the model server's REST port.

Writing a ``:classify`` answer's JSON costs 0.3-0.9 µs a ``(label, score)``
pair with the GIL held (0.27 s for 100,000 examples of three classes on the
shared 2-core machine), so from
``--rest_api_json_answer_offload_elements`` pairs (regression values for
``:regress``) the answer is written in a JSON worker process, as ``:predict``'s
is. Two model servers serve the same models: one with the default threshold,
one that writes every answer in place. The tests assert that both answer the
same bytes, small or large, that the event loop (the main thread) of the first
spent under :data:`LOOP_CPU_LIMIT` on a large call, and that small calls sent
alongside kept being answered.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import orjson
import pytest

from tests.security.figures import record
from tests.security.stack import (
    Listener,
    SmallCalls,
    assert_no_traceback,
    loop_cpu_seconds,
)
from tests.support.compiledmodels import models_config
from tests.support.models import publish_linear_pipeline
from tests.support.modelserver import ModelServer, model_server
from tests.support.pipelines import CLASSES, publish_classifier

pytestmark = pytest.mark.integration

BODY_LIMIT = 64 * 1024 * 1024
"""The REST body limit of both servers (their gRPC message limit)."""
EXAMPLES = 40_000
"""Examples of the large calls: 400,000 pairs to classify (about 2.5 s of
writing in place on the loaded machine) and a body over the 1 MiB from which
it is parsed in a worker too."""
LOOP_CPU_LIMIT = 0.2
"""CPU seconds the offloading server's event loop may spend on one large
``:classify`` call: reading the 1.4 MiB body, handing it and the answer's
arrays to the workers, sending 9.3 MiB back (0.03-0.04 s measured at load
average 4.4-5.5; the margin is for a loaded runner). With the answer written in
place the loop spent 0.48 s on the same call."""
SMALL_CALL_LATENCY = 1.0
"""Most a small call may take while the large answer is written (a few ms on
an idle machine; the margin is for the shared 2-core runner, as in
``test_large_json``)."""


@dataclass(frozen=True)
class Servers:
    offloading: ModelServer
    """Default threshold: large answers are written in a worker."""
    in_place: ModelServer
    """Every answer written on the event loop."""


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    folder = tmp_path_factory.mktemp("large-examples-answers")
    registry = folder / "models"
    publish_classifier(registry, "classifier")
    publish_linear_pipeline(registry, "linear", offset=1.0)
    config = models_config(folder, registry, ("classifier", "linear"))
    common = (f"--model_config_file={config}", f"--grpc_max_message_bytes={BODY_LIMIT}")
    with (
        model_server(common, log_path=folder / "offloading.log") as offloading,
        model_server(
            (*common, f"--rest_api_json_answer_offload_elements={2**62}"),
            log_path=folder / "in-place.log",
        ) as in_place,
    ):
        yield Servers(offloading, in_place)


def _body(examples: int) -> bytes:
    rng = np.random.default_rng(5)
    rows = [
        {"a": [float(a)], "b": [float(b)]}
        for a, b in rng.normal(size=(examples, 2)).tolist()
    ]
    return orjson.dumps({"examples": rows})


def _post(server: ModelServer, api: str, body: bytes) -> httpx.Response:
    model = "classifier" if api == "classify" else "linear"
    return httpx.post(
        f"http://127.0.0.1:{server.rest_port}/v1/models/{model}:{api}",
        content=body,
        headers={"content-type": "application/json"},
        timeout=120,
    )


@pytest.mark.parametrize("api", ["classify", "regress"])
@pytest.mark.parametrize("examples", [3, EXAMPLES])
def test_answers_are_the_same_bytes_written_in_a_worker_or_in_place(
    servers: Servers, api: str, examples: int
) -> None:
    body = _body(examples)
    offloaded = _post(servers.offloading, api, body)
    in_place = _post(servers.in_place, api, body)
    assert offloaded.status_code == in_place.status_code == 200, offloaded.text[:200]
    assert offloaded.content == in_place.content
    results = orjson.loads(offloaded.content)["results"]
    assert len(results) == examples
    if api == "classify":
        assert [label for label, _ in results[0]] == CLASSES
        assert sum(score for _, score in results[0]) == pytest.approx(1.0, abs=1e-5)
    else:
        a, b = orjson.loads(body)["examples"][0].values()
        assert results[0] == pytest.approx(2 * a[0] + 3 * b[0] + 1.0, rel=1e-5)


def test_an_empty_answer_is_refused_the_same_way(servers: Servers) -> None:
    for server in (servers.offloading, servers.in_place):
        answer = _post(server, "classify", b'{"examples": []}')
        assert answer.status_code == 400
        assert "error" in answer.json()


def test_a_large_classify_answer_does_not_hold_up_other_clients(
    servers: Servers,
) -> None:
    body = _body(EXAMPLES)
    assert 1024 * 1024 < len(body) < BODY_LIMIT
    used = {}
    for name, server in (
        ("offloading", servers.offloading),
        ("in place", servers.in_place),
    ):
        pid = server.process.pid
        before = loop_cpu_seconds(pid)
        answer = _post(server, "classify", body)
        used[name] = loop_cpu_seconds(pid) - before
        assert answer.status_code == 200, answer.text[:200]
        record(f"event loop CPU s ({name})", used[name])
    record("answer MiB", len(answer.content) / 1024 / 1024)
    assert used["offloading"] < LOOP_CPU_LIMIT, (
        f"the event loop spent {used['offloading']:.2f} s of CPU on the call"
    )
    listener = Listener(
        "model server", servers.offloading.rest_port, servers.offloading.process, {}
    )
    with SmallCalls(listener) as small:
        answer = _post(servers.offloading, "classify", body)
        time.sleep(0.05)
    assert answer.status_code == 200
    small.assert_kept_up(SMALL_CALL_LATENCY, "answer was written")
    assert_no_traceback(servers.offloading.process)
