"""The gateway answers the same whether its JSON work runs in place or in its
JSON workers: typed bodies parsed and validated, typed and v2 answers written.

Two gateways stand in front of one model server: one does everything on its
event loop (thresholds out of reach), the other sends every body and every
answer to its workers (thresholds of one byte and one element). Each request,
valid or not, goes to both; status, body bytes and the headers that describe
the body must be equal. The workers' context switches show that only the
second gateway used them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from tests.security.figures import record
from tests.security.stack import assert_no_traceback, loop_cpu_seconds
from tests.support.compiledmodels import models_config
from tests.support.gateway import GatewayProcess, running_gateway
from tests.support.models import publish_linear_pipeline
from tests.support.modelserver import model_server
from tests.support.pipelines import publish_classifier
from tests.support.processes import spawned_workers

pytestmark = pytest.mark.integration

BODY_LIMIT = 64 * 1024 * 1024
"""Both gateways' body limit."""
LOOP_CPU_LIMIT = 0.5
"""CPU seconds the offloading gateway's event loop may spend on one large
``:classify`` call (see the test for what it does; figures in the protocol
README)."""


@dataclass(frozen=True)
class Gateways:
    in_place: GatewayProcess
    offloading: GatewayProcess


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    folder = tmp_path_factory.mktemp("gateway-json-offload")
    registry = folder / "models"
    publish_classifier(registry, "classifier")
    publish_linear_pipeline(registry, "linear", offset=1.0)
    config = models_config(folder, registry, ("classifier", "linear"))
    with model_server(
        (f"--model_config_file={config}", f"--grpc_max_message_bytes={BODY_LIMIT}"),
        log_path=folder / "model-server.log",
    ) as server:
        env = {"GATEWAY_REGISTRY": str(registry)}
        common = (
            f"--default-backend={server.grpc_target}",
            f"--max-body-bytes={BODY_LIMIT}",
        )
        with (
            running_gateway(
                folder / "in-place",
                env=env,
                flags=[
                    *common,
                    f"--json-offload-bytes={2**62}",
                    f"--json-answer-offload-elements={2**62}",
                ],
            ) as in_place,
            running_gateway(
                folder / "offloading",
                env=env,
                flags=[
                    *common,
                    "--json-offload-bytes=1",
                    "--json-answer-offload-elements=1",
                ],
            ) as offloading,
        ):
            yield Gateways(in_place, offloading)


def _rows(count: int) -> list[dict[str, float]]:
    values = np.random.default_rng(3).normal(size=(count, 2)).tolist()
    return [{"a": a, "b": b} for a, b in values]


def _v2(count: int, **extra: object) -> bytes:
    columns = np.random.default_rng(4).normal(size=(2, count))
    inputs = [
        {"name": name, "shape": [count], "datatype": "FP64", "data": column}
        for name, column in zip(("a", "b"), columns, strict=True)
    ]
    return orjson.dumps({"inputs": inputs, **extra}, option=orjson.OPT_SERIALIZE_NUMPY)


JSON = {"content-type": "application/json"}

TYPED_CASES: dict[str, tuple[str, bytes, Mapping[str, str]]] = {
    "valid": ("/models/linear/predict", orjson.dumps({"instances": _rows(3)}), JSON),
    "valid 10,000 rows": (
        "/models/linear/predict",
        orjson.dumps({"instances": _rows(10_000)}),
        JSON,
    ),
    "pinned version": (
        "/models/linear/versions/1/predict",
        orjson.dumps({"instances": _rows(2)}),
        JSON,
    ),
    "string outputs": (
        "/models/classifier/predict",
        orjson.dumps({"instances": _rows(4)}),
        JSON,
    ),
    "json content type with a suffix": (
        "/models/linear/predict",
        orjson.dumps({"instances": _rows(1)}),
        {"content-type": "application/vnd.test+json; charset=utf-8"},
    ),
    "a string for a number": (
        "/models/linear/predict",
        b'{"instances": [{"a": "1.5", "b": 2.0}, {"a": 1.0, "b": true}]}',
        JSON,
    ),
    "a missing and an extra field": (
        "/models/linear/predict",
        b'{"instances": [{"a": 1.0, "c": 2.0}]}',
        JSON,
    ),
    "an extra key": (
        "/models/linear/predict",
        b'{"instances": [{"a": 1.0, "b": 2.0}], "signature_name": "x"}',
        JSON,
    ),
    "NaN and infinity": (
        "/models/linear/predict",
        b'{"instances": [{"a": NaN, "b": 1e400}]}',
        JSON,
    ),
    "null in a column the model does not impute": (
        "/models/linear/predict",
        b'{"instances": [{"a": null, "b": 1.0}]}',
        JSON,
    ),
    "no rows": ("/models/linear/predict", b'{"instances": []}', JSON),
    "10,001 rows": (
        "/models/linear/predict",
        orjson.dumps({"instances": _rows(10_001)}),
        JSON,
    ),
    "not JSON": ("/models/linear/predict", b'{"instances": [{"a": 1.0,', JSON),
    "an array, not an object": ("/models/linear/predict", b"[1, 2]", JSON),
    "empty body": ("/models/linear/predict", b"", JSON),
    "no content type": (
        "/models/linear/predict",
        orjson.dumps({"instances": _rows(1)}),
        {},
    ),
    "text content type": (
        "/models/linear/predict",
        orjson.dumps({"instances": _rows(1)}),
        {"content-type": "text/plain"},
    ),
    "not UTF-8": ("/models/linear/predict", b'{"instances": "\xff\xfe"}', JSON),
    "nested 100,000 deep": ("/models/linear/predict", b"[" * 100_000, JSON),
}

V2_CASES: dict[str, tuple[str, bytes, Mapping[str, str]]] = {
    "JSON": ("/v2/models/linear/infer", _v2(3, id="call-1"), JSON),
    "20,000 rows": ("/v2/models/linear/infer", _v2(20_000), JSON),
    "binary outputs": (
        "/v2/models/linear/infer",
        _v2(300, parameters={"binary_data_output": True}),
        JSON,
    ),
    "gzip": (
        "/v2/models/linear/infer",
        _v2(2_000),
        {**JSON, "accept-encoding": "gzip"},
    ),
    "deflate, one output binary": (
        "/v2/models/linear/infer",
        _v2(
            2_000,
            outputs=[{"name": "predictions", "parameters": {"binary_data": True}}],
        ),
        {**JSON, "accept-encoding": "deflate"},
    ),
    "classification": (
        "/v2/models/linear/infer",
        _v2(
            50,
            outputs=[{"name": "predictions", "parameters": {"classification": 1}}],
        ),
        JSON,
    ),
    "string outputs": ("/v2/models/classifier/infer", _v2(40), JSON),
    "classification of strings": (
        "/v2/models/classifier/infer",
        _v2(
            5,
            outputs=[{"name": "predictions", "parameters": {"classification": 2}}],
        ),
        JSON,
    ),
}


def _examples(count: int) -> bytes:
    values = np.random.default_rng(5).normal(size=(count, 2)).tolist()
    return orjson.dumps({"examples": [{"a": [a], "b": [b]} for a, b in values]})


LARGE_EXAMPLES = 40_000
"""Examples of the large v1 calls: 400,000 pairs to classify (a 9.3 MiB
answer), 40,000 values to regress; both over the default answer threshold."""

V1_CASES: dict[str, tuple[str, bytes, Mapping[str, str]]] = {
    "classify": ("/v1/models/classifier:classify", _examples(3), JSON),
    "classify 40,000 examples": (
        "/v1/models/classifier:classify",
        _examples(LARGE_EXAMPLES),
        JSON,
    ),
    "classify with a context": (
        "/v1/models/classifier:classify",
        b'{"context": {"b": [0.5]}, "examples": [{"a": [1.0]}, {"a": [-2.0]}]}',
        JSON,
    ),
    "classify, no examples": (
        "/v1/models/classifier:classify",
        b'{"examples": []}',
        JSON,
    ),
    "regress": ("/v1/models/linear:regress", _examples(3), JSON),
    "regress 40,000 examples": (
        "/v1/models/linear:regress",
        _examples(LARGE_EXAMPLES),
        JSON,
    ),
    "regress, a missing feature": (
        "/v1/models/linear:regress",
        b'{"examples": [{"a": [1.0]}]}',
        JSON,
    ),
}

DESCRIBING_HEADERS = (
    "content-type",
    "content-encoding",
    "content-length",
    "inference-header-content-length",
)


def _answer(
    gateway: GatewayProcess, path: str, body: bytes, headers: Mapping[str, str]
) -> tuple[int, bytes, dict[str, str | None]]:
    answer = httpx.post(gateway.url + path, content=body, headers=headers, timeout=60)
    return (
        answer.status_code,
        answer.content,
        {name: answer.headers.get(name) for name in DESCRIBING_HEADERS},
    )


def _worker_wakeups(gateway: GatewayProcess) -> int:
    """Context switches of the gateway's workers: an idle worker sleeps on its
    task pipe and has none, one handed a task has some, however little CPU the
    task took (CPU time counts in 10 ms ticks)."""
    switches = 0
    for pid in spawned_workers(gateway.process.pid):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if "ctxt_switches:" in line:
                switches += int(line.split()[1])
    return switches


@pytest.mark.parametrize(
    ("case", "request_parts"),
    [*TYPED_CASES.items(), *V2_CASES.items(), *V1_CASES.items()],
    ids=[
        *(f"typed: {name}" for name in TYPED_CASES),
        *(f"v2: {name}" for name in V2_CASES),
        *(f"v1: {name}" for name in V1_CASES),
    ],
)
def test_in_place_and_in_a_worker_answer_the_same(
    gateways: Gateways,
    case: str,
    request_parts: tuple[str, bytes, Mapping[str, str]],
) -> None:
    path, body, headers = request_parts
    in_place_wakeups = _worker_wakeups(gateways.in_place)
    offloading_wakeups = _worker_wakeups(gateways.offloading)
    expected = _answer(gateways.in_place, path, body, headers)
    got = _answer(gateways.offloading, path, body, headers)
    assert got[0] == expected[0], (case, got[1][:300], expected[1][:300])
    assert got[1] == expected[1], case
    # httpx inflates a compressed answer: gzip's header holds the time it was
    # written, the rest must be equal.
    assert got[2] == expected[2], case
    assert _worker_wakeups(gateways.in_place) == in_place_wakeups
    if body:
        # Not an empty body: that one is parsed in place at any threshold.
        assert _worker_wakeups(gateways.offloading) > offloading_wakeups, (
            "the offloading gateway's workers did not run"
        )


def test_the_cases_cover_successes_and_each_refusal(gateways: Gateways) -> None:
    statuses = set()
    cases = [*TYPED_CASES.values(), *V2_CASES.values(), *V1_CASES.values()]
    for path, body, headers in cases:
        statuses.add(_answer(gateways.in_place, path, body, headers)[0])
    assert statuses == {200, 400, 422}
    assert_no_traceback(gateways.in_place.process)
    assert_no_traceback(gateways.offloading.process)


def test_a_large_classify_answer_is_written_off_the_event_loop(
    gateways: Gateways,
) -> None:
    """The gateway's loop parses the backend's ClassificationResponse and
    serializes its result again for the worker (both in C); writing the JSON
    of 400,000 pairs (about 2 µs a pair through the message) is left to the
    worker."""
    path, body, headers = V1_CASES["classify 40,000 examples"]
    used = {}
    for name, gateway in (
        ("offloading", gateways.offloading),
        ("in place", gateways.in_place),
    ):
        pid = gateway.process.pid
        before = loop_cpu_seconds(pid)
        status, content, _ = _answer(gateway, path, body, headers)
        used[name] = loop_cpu_seconds(pid) - before
        assert status == 200, content[:200]
        record(f"gateway event loop CPU s ({name})", used[name])
    record("answer MiB", len(content) / 1024 / 1024)
    assert used["offloading"] < LOOP_CPU_LIMIT, (
        f"the gateway's event loop spent {used['offloading']:.2f} s of CPU on the call"
    )
