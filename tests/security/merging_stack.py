"""Two gateways merging concurrent calls (gRPC Predict and ModelInfer, REST
v1 `:predict` and v2 `infer`) in front of one model server,
for the tests of large merged answers (``test_loop_stalls``,
``test_gateway_merged_answers``).

The model ``spread`` answers 65,536 float64 values a row, so a few rows make a
large answer: eight callers of four rows each, merged into one backend call of
32 rows (the gateways' default ``--coalesce-max-rows``), get a 16 MiB answer
that the gateway cuts into eight 2 MiB ones. One gateway has the default
``--grpc-parse-offload-bytes`` (1 MiB); the other has 0, so every answer is
parsed and cut on its event loop, as before the threshold existed. Both call
the model server as gRPC-Web on its REST port (the default with
``--rest-backends``).

``mirrored`` is the same model in two versions behind labels, the canary one
shadowing the stable one, so each call to it is made twice and the two
answers compared.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
from modelregistry import Registry
from modelregistry.layout import SERVEKIT_CONFIG_FILE
from servekit_protocol import messages
from servekit_protocol import oip_messages as oip

from tests.security.recording import PREDICT
from tests.security.stack import assert_no_traceback
from tests.support.gateway import GatewayProcess, running_gateway
from tests.support.models import publish_regression
from tests.support.modelserver import ModelServer, model_server

SPREAD_OUTPUTS = 65_536
"""Values the ``spread`` model answers a row: 512 KiB of float64."""
CALLER_ROWS = 4
"""Rows of one merged caller: a 2 MiB answer each, over the 1 MiB threshold."""
MERGED_CALLERS = 8
"""Callers that wait while a first call is in flight and then go as one call
of 32 rows (the default ``--coalesce-max-rows``): a 16 MiB merged answer."""
ROUTES = {
    "routes": {
        "mirrored": {
            "stable": "stable",
            "canary": {"label": "canary", "weight": 1.0},
            "shadow": True,
        }
    }
}
"""``mirrored`` answers from its stable version and shadows every call to its
canary version."""
MESSAGE_LIMIT = 64 * 1024 * 1024
"""The model server's message limit here: room for the 16 MiB merged answer."""


def publish_spread_model(registry: Path, name: str) -> None:
    """A linear regression on one float64 input ``x`` answering
    ``SPREAD_OUTPUTS`` float64 ``predictions`` a row."""
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(11)
    features = np.arange(8.0).reshape(-1, 1)
    slopes = rng.normal(size=SPREAD_OUTPUTS)
    model = LinearRegression().fit(features, features * slopes + 0.5)
    publish_regression(registry, name, model, features=1, outputs=SPREAD_OUTPUTS)


@dataclass(frozen=True)
class MergingGateways:
    server: ModelServer
    registry: Path
    offloading: GatewayProcess
    """The default threshold: large merged answers cut off the event loop."""
    parsing: GatewayProcess
    """``--grpc-parse-offload-bytes 0``: every answer parsed and cut on the loop."""


@contextlib.contextmanager
def merging_gateways(folder: Path) -> Iterator[MergingGateways]:
    """The model server and the two gateways, until the block ends."""
    registry = folder / "models"
    publish_spread_model(registry, "spread")
    publish_spread_model(registry, "mirrored")
    publish_spread_model(registry, "mirrored")
    labels = Registry(registry)
    labels.set_label("mirrored", "stable", 1)
    labels.set_label("mirrored", "canary", 2)
    (registry / "routes.yaml").write_text(json.dumps(ROUTES))
    with model_server(
        (
            f"--model_config_file={registry / SERVEKIT_CONFIG_FILE}",
            f"--grpc_max_message_bytes={MESSAGE_LIMIT}",
        ),
        log_path=folder / "model-server.log",
    ) as server:
        env = {"GATEWAY_REGISTRY": str(registry)}
        flags = gateway_flags(server)
        with (
            running_gateway(folder / "offloading", env=env, flags=flags) as offloading,
            running_gateway(
                folder / "parsing",
                env=env,
                flags=[*flags, "--grpc-parse-offload-bytes=0"],
            ) as parsing,
        ):
            yield MergingGateways(server, registry, offloading, parsing)
            for gateway in (offloading, parsing):
                assert_no_traceback(gateway.process)
        assert_no_traceback(server.process)


def gateway_flags(server: ModelServer) -> list[str]:
    """The flags of a gateway in front of ``server``, called as gRPC-Web on
    its REST port."""
    rest = f'{{"{server.grpc_target}": "127.0.0.1:{server.rest_port}"}}'
    return [f"--default-backend={server.grpc_target}", f"--rest-backends={rest}"]


def spread_request(
    caller: int,
    rows: int = CALLER_ROWS,
    version: int | None = None,
    model: str = "spread",
) -> bytes:
    """Caller number ``caller``'s Predict of ``rows`` rows, its values its own,
    of ``model`` (and ``version`` when given)."""
    request = messages.PredictRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    tensor = request.inputs["x"]
    tensor.dtype = messages.DT_DOUBLE
    tensor.tensor_shape.dim.add(size=rows)
    tensor.tensor_shape.dim.add(size=1)
    tensor.double_val.extend(float(caller * rows + row) for row in range(rows))
    return request.SerializeToString()


FIRST_ROWS = 16
"""Rows of the first call: an 8 MiB answer, long enough in flight for the
others, sent 20 ms after it, to arrive meanwhile (a few ms)."""


def merged_calls(gateway: GatewayProcess) -> float:
    """Backend Predicts the gateway made for more than half of
    ``MERGED_CALLERS`` callers so far."""
    calls = gateway.metric("gateway_coalesced_requests_count")
    fewer = gateway.metric(
        "gateway_coalesced_requests_bucket", le=f"{MERGED_CALLERS // 2:.1f}"
    )
    return calls - fewer


def concurrent_predicts(
    gateway: GatewayProcess, rows: int = CALLER_ROWS, version: int | None = None
) -> list[tuple[str, bytes]]:
    """`concurrent_calls` of TF Serving Predicts (``spread_request``)."""
    return concurrent_calls(
        gateway,
        PREDICT,
        lambda caller, count: spread_request(caller, count, version),
        rows,
    )


def concurrent_calls(
    gateway: GatewayProcess,
    method: str,
    request: Callable[[int, int], bytes],
    rows: int = CALLER_ROWS,
) -> list[tuple[str, bytes]]:
    """One first call (of ``FIRST_ROWS`` rows) and ``MERGED_CALLERS`` more
    sent while it is in flight, each on its own connected channel, released
    together; ``request(caller, rows)`` is a caller's message to ``method``.
    Each one's status (a gRPC code's name, with its message) and answer, in
    the callers' order."""
    callers = 1 + MERGED_CALLERS
    options = [("grpc.max_receive_message_length", MESSAGE_LIMIT)]
    channels = [
        grpc.insecure_channel(gateway.grpc_target, options=options)
        for _ in range(callers)
    ]
    outcomes: list[tuple[str, bytes]] = [("", b"")] * callers
    start = threading.Barrier(callers - 1)

    def call(caller: int) -> None:
        stub = channels[caller].unary_unary(method)
        if caller:
            start.wait(timeout=60)
        count = rows if caller else FIRST_ROWS
        try:
            outcomes[caller] = ("OK", stub(request(caller, count), timeout=60))
        except grpc.RpcError as exc:
            outcomes[caller] = (f"{exc.code().name}: {exc.details()}", b"")

    try:
        for channel in channels:
            grpc.channel_ready_future(channel).result(timeout=30)
        threads = [
            threading.Thread(target=call, args=(caller,)) for caller in range(callers)
        ]
        threads[0].start()
        time.sleep(0.02)
        for thread in threads[1:]:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        for channel in channels:
            channel.close()
    return outcomes


def concurrent_posts(
    gateway: GatewayProcess,
    path: str,
    body: Callable[[int, int], dict[str, Any]],
    rows: int = CALLER_ROWS,
) -> list[tuple[int, bytes]]:
    """`concurrent_calls` over HTTP: ``body(caller, rows)`` is a caller's JSON
    body POSTed to ``path``; each one's status and body, in the callers'
    order."""
    callers = 1 + MERGED_CALLERS
    outcomes: list[tuple[int, bytes]] = [(0, b"")] * callers
    start = threading.Barrier(callers - 1)

    def call(caller: int) -> None:
        if caller:
            start.wait(timeout=60)
        count = rows if caller else FIRST_ROWS
        response = httpx.post(gateway.url + path, json=body(caller, count), timeout=120)
        outcomes[caller] = (response.status_code, response.content)

    threads = [threading.Thread(target=call, args=(c,)) for c in range(callers)]
    threads[0].start()
    time.sleep(0.02)
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    return outcomes


def spread_instances(caller: int, rows: int) -> dict[str, Any]:
    """Caller number ``caller``'s TF Serving REST body of ``rows`` rows for
    ``spread``, the values of its `spread_request`."""
    return {"instances": [[float(caller * rows + row)] for row in range(rows)]}


def spread_inputs(caller: int, rows: int) -> dict[str, Any]:
    """The same rows as an Open Inference Protocol REST `infer` body."""
    data = [float(caller * rows + row) for row in range(rows)]
    return {
        "inputs": [{"name": "x", "datatype": "FP64", "shape": [rows, 1], "data": data}]
    }


def spread_infer(rows: int, caller: int = 0) -> bytes:
    """An OIP ModelInfer of ``rows`` rows for ``spread``, in ``fp64_contents``
    (so its answer is typed too): a few bytes a row, 512 KiB of answer;
    caller number ``caller``'s values are its own."""
    request = oip.ModelInferRequest(model_name="spread", id="small")
    tensor = request.inputs.add(name="x", datatype="FP64", shape=[rows, 1])
    tensor.contents.fp64_contents.extend(
        float(caller * rows + row) for row in range(rows)
    )
    return request.SerializeToString()


def lone_post(
    path: str, body: Callable[[int, int], dict[str, Any]]
) -> Callable[[GatewayProcess, int], bytes]:
    """One caller's REST call alone (what a merged call's answer must equal)."""

    def run(gateway: GatewayProcess, caller: int) -> bytes:
        answer = httpx.post(
            gateway.url + path, json=body(caller, CALLER_ROWS), timeout=60
        )
        assert answer.status_code == 200, answer.text
        return answer.content

    return run
