"""The servekit model server stopped with SIGTERM while the answer to a call
through the gateway (its default backend gRPC client, ``h2``) is still on its
way: the model server sends GOAWAY and closes, and the gateway still reads
the answer, the GOAWAY and the close in that order and answers the call; a
call made after it answers UNAVAILABLE at once instead of waiting for its
deadline.

A relay between them delays what the model server sends by
:data:`DELAY_SECONDS` (:mod:`tests.support.delayrelay`), which makes "on its
way" certain on any machine: the test sends SIGTERM once the model server
counts the call as answered, and the gateway reads that answer only after
the delay.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from servekit_protocol import messages

from tests.security.h2_backend_stack import line_predict
from tests.security.recording import PREDICT
from tests.security.stack import assert_no_traceback
from tests.security.test_loop_stalls import publish_line_model
from tests.support.delayrelay import delaying_relay
from tests.support.gateway import GatewayProcess, running_gateway
from tests.support.modelserver import METRICS_PATH, write_monitoring_config
from tests.support.processes import wait_until
from tests.support.restartable import RestartableModelServer

pytestmark = pytest.mark.integration

ROWS = 4
DELAY_SECONDS = 2.0
"""How late the gateway reads each of the model server's writes."""
DEADLINE_SECONDS = 60.0
"""The calls' deadline: far beyond what an answered or refused call takes."""
PROMPT_SECONDS = 20.0
"""Longest a call may take here: the delay, the drain, and a wide margin
for a loaded machine, still a third of the deadline."""


def _answered(server: RestartableModelServer) -> float:
    """Calls of ``line`` the model server has answered."""
    page = httpx.get(
        f"http://127.0.0.1:{server.rest_port}{METRICS_PATH}", timeout=10
    ).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(page)
        if family.name == "modelserver_request_count"
        for sample in family.samples
        if sample.labels.get("model") == "line" and sample.name.endswith("_total")
    )


def _predict(gateway: GatewayProcess) -> tuple[grpc.StatusCode, bytes, float]:
    started = time.monotonic()
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        try:
            answer = channel.unary_unary(PREDICT)(
                line_predict(ROWS), timeout=DEADLINE_SECONDS
            )
        except grpc.RpcError as exc:
            return exc.code(), b"", time.monotonic() - started
    return grpc.StatusCode.OK, answer, time.monotonic() - started


def test_a_call_under_way_is_answered_when_the_backend_drains(
    tmp_path: Path,
) -> None:
    registry = tmp_path / "models"
    publish_line_model(registry, "line")
    server = RestartableModelServer(
        registry,
        tmp_path,
        flags=(f"--monitoring_config_file={write_monitoring_config(tmp_path)}",),
    )
    server.start()
    try:
        with (
            delaying_relay(server.target, DELAY_SECONDS) as relay,
            running_gateway(
                tmp_path / "gateway",
                env={"GATEWAY_REGISTRY": str(registry)},
                flags=[f"--default-backend={relay}"],
            ) as gateway,
        ):
            results: list[tuple[grpc.StatusCode, bytes, float]] = []
            under_way = threading.Thread(
                target=lambda: results.append(_predict(gateway))
            )
            under_way.start()
            wait_until(
                lambda: _answered(server) >= 1,
                timeout=PROMPT_SECONDS,
                what="the model server to answer the call",
            )
            assert server.process is not None
            server.process.popen.send_signal(signal.SIGTERM)
            under_way.join(DEADLINE_SECONDS + 10)

            code, answer, took = results[0]
            assert code is grpc.StatusCode.OK
            values = (
                messages.PredictResponse.FromString(answer)
                .outputs["predictions"]
                .double_val
            )
            assert list(values) == pytest.approx([3.0 * 0.5 + 0.25] * ROWS)
            assert took < PROMPT_SECONDS, took

            assert server.process.popen.wait(timeout=PROMPT_SECONDS) == 0
            code, _, took = _predict(gateway)
            assert code is grpc.StatusCode.UNAVAILABLE
            assert took < PROMPT_SECONDS, took
            assert_no_traceback(gateway.process)
    finally:
        server.stop()
