"""Servers shared by the security tests of one session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.security.figures import write_if_asked
from tests.security.forwarding_stack import Gateways, forwarding_gateways
from tests.security.http2 import GATEWAY_ENV, MODEL_SERVER_FLAGS, Target
from tests.security.merging_stack import MergingGateways, merging_gateways
from tests.security.stack import Stack, serving_stack


@pytest.fixture(scope="session", autouse=True)
def measured_figures() -> Iterator[None]:
    """Writes the figures the tests measured (:mod:`tests.security.figures`)."""
    yield
    write_if_asked()


@pytest.fixture(scope="session")
def listener_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The model server and the gateway with small listener limits
    (:mod:`tests.security.stack`), for the HTTP/1.1, body and admission tests."""
    with serving_stack(tmp_path_factory.mktemp("listeners")) as running:
        yield running


@pytest.fixture(scope="session")
def http2_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Both servers with the gRPC ports' HTTP/2 limits of :mod:`tests.security.http2`."""
    with serving_stack(
        tmp_path_factory.mktemp("http2"),
        gateway_env=GATEWAY_ENV,
        # These tests send many keyless calls on purpose; the limit on failed
        # attempts per address is tested on its own.
        gateway_flags=("--auth-failure-burst=1000",),
        model_server_flags=MODEL_SERVER_FLAGS,
    ) as running:
        yield running


@pytest.fixture(params=["model server", "gateway"])
def target(http2_stack: Stack, request: pytest.FixtureRequest) -> Target:
    """One gRPC port under attack."""
    if request.param == "model server":
        server = http2_stack.model_server
        return Target("model server", server.grpc_port, server.process, ())
    return gateway_target_of(http2_stack)


@pytest.fixture
def gateway_target(http2_stack: Stack) -> Target:
    return gateway_target_of(http2_stack)


def gateway_target_of(stack: Stack) -> Target:
    gateway = stack.gateway
    key = (("x-api-key", stack.keys.admin),)
    return Target("gateway", gateway.grpc_port, gateway.process, key)


@pytest.fixture(scope="session")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    """Three gateways (forwarding large gRPC messages over gRPC-Web and over
    gRPC, parsing them whole) in front of one model server
    (:mod:`tests.security.forwarding_stack`)."""
    with forwarding_gateways(tmp_path_factory.mktemp("gateway-large-grpc")) as stack:
        yield stack


@pytest.fixture(scope="session")
def merging(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MergingGateways]:
    """Two gateways merging concurrent gRPC Predicts with large answers, cutting
    them off and on the event loop (:mod:`tests.security.merging_stack`)."""
    with merging_gateways(tmp_path_factory.mktemp("gateway-merged")) as stack:
        yield stack
