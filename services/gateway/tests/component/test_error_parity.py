"""Every GatewayError answers the same over the gateway's REST and gRPC fronts,
through the wire contract's one table (TF Serving's, shared with the model server).

The gateway is the real one (HTTP app in process, gRPC front on 127.0.0.1); only
its Predict path is replaced by one that raises the error under test, so every
class, and every code a backend can answer, is exercised.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import grpc.aio
import httpx
import numpy as np
import pytest
from gateway import errors
from gateway.context import CallContext
from gateway.dataplane import Gateway
from gateway.errors import BackendError, GatewayError
from gateway.forwarding import Forwarder, PredictCall, Predicted
from gateway.grpcfront.server import create_grpc_server
from gateway.main import build_gateway, create_app
from gateway.routing.router import Plan
from gateway.settings import Settings
from servekit_protocol import messages, tensors
from servekit_protocol.grpc_codes import from_grpc
from servekit_protocol.services import PredictionServiceStub
from servekit_protocol.status import HTTP_STATUS_FOR_CODE, agrees


def _subclasses(base: type[GatewayError]) -> list[type[GatewayError]]:
    found: list[type[GatewayError]] = []
    for subclass in base.__subclasses__():
        found.append(subclass)
        found.extend(_subclasses(subclass))
    return found


def _instance(cls: type[GatewayError]) -> GatewayError:
    message = f"{cls.__name__} happened"
    if cls is errors.UnprocessableInput:
        return errors.UnprocessableInput(message, [{"loc": ["x"], "msg": "bad"}])
    if cls is errors.RateLimited:
        return errors.RateLimited(message, 1.5)
    return cls(message)


CASES: list[GatewayError] = [
    _instance(cls)
    for cls in sorted(
        {*_subclasses(GatewayError), GatewayError}, key=lambda cls: cls.__name__
    )
    if cls is not BackendError
] + [
    BackendError(f"the backend answered {code.name}", code)
    for code in grpc.StatusCode
    if code is not grpc.StatusCode.OK
]


def _case_id(error: GatewayError) -> str:
    if isinstance(error, BackendError):
        return f"BackendError-{error.grpc_code.name}"
    return type(error).__name__


class RaisingForwarder(Forwarder):
    """The real forwarder, except that Predict raises `error`."""

    error: GatewayError = GatewayError("unset")
    reached: list[tuple[str, str, bool]] = []
    """Protocol, model and whether signatures were wanted, per Predict."""

    async def predict(
        self, ctx: CallContext, plan: Plan, call: PredictCall
    ) -> Predicted:
        self.reached.append((ctx.protocol, plan.primary.model, call.needs_signatures))
        raise self.error


class Fronts:
    def __init__(self, gateway: Gateway, rest: httpx.AsyncClient, grpc_target: str):
        self.gateway = gateway
        self.rest = rest
        self.grpc_target = grpc_target

    def fail_with(self, error: GatewayError) -> None:
        assert isinstance(self.gateway.forwarder, RaisingForwarder)
        self.gateway.forwarder.error = error


@pytest.fixture
async def fronts() -> AsyncIterator[Fronts]:
    # No backend is ever called: the Predict path raises before reaching one.
    settings = Settings(default_backend="127.0.0.1:9", registry=None)
    gateway = build_gateway(settings)
    gateway.forwarder = RaisingForwarder(
        gateway.pool,
        gateway.client,
        gateway.coalescer,
        gateway.signatures,
        gateway.router,
        gateway.shadow,
    )
    RaisingForwarder.reached = []
    app = create_app(settings, gateway)
    server, _ = create_grpc_server(gateway)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway"
        ) as rest:
            yield Fronts(gateway, rest, f"127.0.0.1:{port}")
    finally:
        await server.stop(grace=None)
        await gateway.close()


@pytest.mark.parametrize("error", CASES, ids=_case_id)
async def test_rest_and_grpc_agree(error: GatewayError, fronts: Fronts) -> None:
    fronts.fail_with(error)
    response = await fronts.rest.post("/v1/models/m:predict", json={"instances": [1.0]})
    assert response.status_code == error.http_status
    assert "error" in response.json()

    request = messages.PredictRequest()
    request.model_spec.name = "m"
    tensors.from_ndarray(np.array([1.0], np.float32), into=request.inputs["x"])
    async with grpc.aio.insecure_channel(fronts.grpc_target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await PredictionServiceStub(channel).Predict(request, timeout=10)
    code = caught.value.code()
    assert code is error.grpc_code
    # Both answers came from the Predict path, not from an earlier check.
    assert RaisingForwarder.reached == [("rest_v1", "m", True), ("grpc", "m", False)]
    # The two answers keep the one table (or a documented HTTP refinement).
    assert agrees(from_grpc(code), response.status_code)
    if isinstance(error, BackendError):
        assert response.status_code == HTTP_STATUS_FOR_CODE[from_grpc(code)]


def test_tf_servings_disagreements_are_gone() -> None:
    precondition = BackendError("x", grpc.StatusCode.FAILED_PRECONDITION)
    cancelled = BackendError("x", grpc.StatusCode.CANCELLED)
    assert precondition.http_status == 400
    assert cancelled.http_status == 499
