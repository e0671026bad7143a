"""In-process REST and gRPC adapters over a small fake dataplane.

The adapters are the components under test; the dataplane behind them is a fake
that really computes ``y = 0.5 x + 2`` for a model ``half`` (versions 1 and 2,
label ``stable`` → 1), records what it was asked, and raises ``error`` when a
test sets one. The REST app runs under ``httpx.ASGITransport``; the gRPC server
is a real grpc.aio server on 127.0.0.1 port 0.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc.aio
import httpx
import numpy as np
import pytest
from modelserver.dataplane import DataPlane
from modelserver.errors import (
    LabelNotFound,
    ModelNotFound,
    SignatureNotFound,
    VersionNotFound,
)
from modelserver.protocol.grpc.server import GrpcServer
from modelserver.protocol.rest.app import RestApp, create_app
from modelserver.types import (
    PREDICT_METHOD,
    REGRESS_METHOD,
    Classifications,
    ClassifyRequest,
    ClassifyResponse,
    ModelMetadata,
    ModelSpec,
    MultiInferenceRequest,
    MultiInferenceResponse,
    PredictRequest,
    PredictResponse,
    RegressRequest,
    RegressResponse,
    ResolvedSpec,
    SignatureInfo,
    TensorInfo,
    VersionState,
    VersionStatus,
)

MODEL = "half"
SIGNATURES = {
    "serving_default": SignatureInfo(
        method_name=PREDICT_METHOD,
        inputs={"x": TensorInfo("x:0", "DT_FLOAT", (-1,))},
        outputs={"y": TensorInfo("y:0", "DT_FLOAT", (-1,))},
    ),
    "regress": SignatureInfo(
        method_name=REGRESS_METHOD,
        inputs={"inputs": TensorInfo("tf_example:0", "DT_STRING", None)},
        outputs={"outputs": TensorInfo("y:0", "DT_FLOAT", (-1, 1))},
    ),
}


@dataclass
class Call:
    """One dataplane call as the fake saw it."""

    api: str
    spec: ModelSpec
    protocol: str = ""
    timeout: float | None = None
    payload: Any = None


@dataclass
class FakeDataPlane(DataPlane):
    """A dataplane for one tiny model; see the module docstring."""

    error: Exception | None = None
    calls: list[Call] = field(default_factory=list)
    loading: list[str] = field(default_factory=list)
    """Models readiness waits for (none: ready)."""

    def _resolve(self, spec: ModelSpec) -> ResolvedSpec:
        if self.error is not None:
            raise self.error
        if spec.name != MODEL:
            raise ModelNotFound(f"Servable not found for request: Latest({spec.name})")
        version = 2
        if spec.label is not None:
            if spec.label != "stable":
                raise LabelNotFound(
                    f"Unrecognized servable version label: {spec.label}"
                )
            version = 1
        elif spec.version is not None:
            if spec.version not in (1, 2):
                raise VersionNotFound(
                    f"Servable not found for request: Specific({MODEL}, {spec.version})"
                )
            version = spec.version
        signature = spec.signature_name or "serving_default"
        if signature not in SIGNATURES:
            raise SignatureNotFound(
                f'Serving signature name: "{signature}" not found in signature def'
            )
        return ResolvedSpec(MODEL, version, spec.signature_name)

    async def predict(
        self,
        request: PredictRequest,
        *,
        protocol: str = "",
        timeout: float | None = None,
    ) -> PredictResponse:
        self.calls.append(Call("predict", request.spec, protocol, timeout, request))
        resolved = self._resolve(request.spec)
        x = np.asarray(request.inputs["x"], dtype=np.float32)
        return PredictResponse(resolved, {"y": x * np.float32(0.5) + np.float32(2)})

    async def regress(
        self,
        request: RegressRequest,
        *,
        protocol: str = "",
        timeout: float | None = None,
    ) -> RegressResponse:
        self.calls.append(Call("regress", request.spec, protocol, timeout, request))
        resolved = self._resolve(request.spec)
        context = request.context or {}
        values = [
            0.5 * float({**context, **example}["x"][0]) + 2.0
            for example in request.examples
        ]
        return RegressResponse(resolved, np.array(values, np.float32))

    async def classify(
        self,
        request: ClassifyRequest,
        *,
        protocol: str = "",
        timeout: float | None = None,
    ) -> ClassifyResponse:
        self.calls.append(Call("classify", request.spec, protocol, timeout, request))
        resolved = self._resolve(request.spec)
        scores = [[0.5 * float(example["x"][0]) + 2.0] for example in request.examples]
        return ClassifyResponse(
            resolved,
            Classifications(
                labels=None,
                scores=np.array(scores, np.float32).astype(np.float64),
                examples=len(scores),
                classes=1,
            ),
        )

    async def multi_inference(
        self,
        request: MultiInferenceRequest,
        *,
        protocol: str = "",
        timeout: float | None = None,
    ) -> MultiInferenceResponse:
        self.calls.append(
            Call("multi_inference", request.tasks[0].spec, protocol, timeout)
        )
        results: list[ClassifyResponse | RegressResponse] = []
        for task in request.tasks:
            regress = RegressRequest(task.spec, request.examples, request.context)
            results.append(await self.regress(regress))
        return MultiInferenceResponse(results)

    async def signature(self, spec: ModelSpec) -> tuple[ResolvedSpec, SignatureInfo]:
        self.calls.append(Call("signature", spec))
        resolved = self._resolve(spec)
        return resolved, SIGNATURES[spec.signature_name or "serving_default"]

    async def metadata(self, spec: ModelSpec, *, protocol: str = "") -> ModelMetadata:
        self.calls.append(Call("metadata", spec, protocol))
        resolved = self._resolve(spec)
        return ModelMetadata(ResolvedSpec(MODEL, resolved.version), dict(SIGNATURES))

    async def status(
        self, spec: ModelSpec, *, protocol: str = ""
    ) -> list[VersionStatus]:
        self.calls.append(Call("status", spec, protocol))
        self._resolve(ModelSpec(spec.name))
        if spec.version is not None and spec.version not in (1, 2):
            raise VersionNotFound(
                f"Could not find version {spec.version} of model half"
            )
        versions = [spec.version] if spec.version is not None else [2, 1]
        return [VersionStatus(v, VersionState.AVAILABLE) for v in versions]

    async def reload_config(self, config: Any, *, protocol: str = "") -> None:
        self.calls.append(Call("reload_config", ModelSpec(""), protocol, None, config))
        if self.error is not None:
            raise self.error

    def ready(self) -> bool:
        return not self.loading

    def waiting_for(self) -> list[str]:
        return list(self.loading)

    def live(self) -> bool:
        return True


@pytest.fixture
def dataplane() -> FakeDataPlane:
    return FakeDataPlane()


def rest_app(dataplane: FakeDataPlane, **options: Any) -> RestApp:
    return create_app(
        dataplane,
        timeout=options.pop("timeout", 5.0),
        metrics_path=options.pop("metrics_path", "/monitoring/prometheus/metrics"),
        render_metrics=options.pop("render_metrics", lambda: b"# TYPE fake counter\n"),
        **options,
    )


@pytest.fixture
async def rest(dataplane: FakeDataPlane) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=rest_app(dataplane))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


@pytest.fixture
async def grpc_server(dataplane: FakeDataPlane) -> AsyncIterator[GrpcServer]:
    server = GrpcServer(
        dataplane, host="127.0.0.1", port=0, max_message_bytes=64 * 1024 * 1024, grace=1
    )
    await server.start()
    await server.set_serving()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def channel(grpc_server: GrpcServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_server.port}") as opened:
        yield opened
