"""Two gateways in front of one model server called over plain gRPC (no REST
address given to the gateways, as for TF Serving): one with grpcio's client
(``--backend-grpc-client grpcio``), one with the gateway's own HTTP/2 client
(``h2``, the default), for ``test_gateway_h2_backend``.

The registry holds ``line`` (one ``x`` in, one value out: a small request
whose answer is as large as its declared shape) and ``classifier`` (ten
classes on ``a`` and ``b``). The model server is restartable on its ports
and allows :data:`BACKEND_STREAMS` streams a connection.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from servekit_protocol import messages
from servekit_protocol import oip_messages as oip

from tests.security.stack import assert_no_traceback
from tests.security.test_loop_stalls import publish_line_model
from tests.support.gateway import GatewayProcess, running_gateway
from tests.support.pipelines import publish_classifier
from tests.support.restartable import RestartableModelServer

BACKEND_STREAMS = 4
"""The model server's SETTINGS_MAX_CONCURRENT_STREAMS here: the gateway's
client must queue or open a further connection beyond it."""


@dataclass(frozen=True)
class H2Stack:
    server: RestartableModelServer
    grpcio: GatewayProcess
    """The backend called with grpc.aio."""
    h2: GatewayProcess
    """The backend called with ``clients.h2grpc``."""


@contextlib.contextmanager
def h2_stack(folder: Path) -> Iterator[H2Stack]:
    """The model server and the two gateways, until the block ends."""
    registry = folder / "models"
    publish_line_model(registry, "line")
    publish_classifier(registry, "classifier")
    server = RestartableModelServer(
        registry, folder, flags=(f"--http2_max_concurrent_streams={BACKEND_STREAMS}",)
    )
    server.start()
    try:
        env = {"GATEWAY_REGISTRY": str(registry)}
        # Every Predict its own backend call, so that concurrent ones are
        # concurrent streams.
        flags = [f"--default-backend={server.target}", "--coalesce-max-rows=0"]
        with (
            running_gateway(
                folder / "grpcio",
                env=env,
                flags=[*flags, "--backend-grpc-client=grpcio"],
            ) as grpcio,
            running_gateway(
                folder / "h2", env=env, flags=[*flags, "--backend-grpc-client=h2"]
            ) as h2,
        ):
            yield H2Stack(server, grpcio, h2)
            for gateway in (grpcio, h2):
                assert_no_traceback(gateway.process)
    finally:
        server.stop()


def line_predict(rows: int, model: str = "line", name: str = "x") -> bytes:
    """A Predict of a few bytes whose answer has ``rows`` float64 values (its
    one value stands for every element of its ``[rows, 1]`` input)."""
    request = messages.PredictRequest()
    request.model_spec.name = model
    tensor = request.inputs[name]
    tensor.dtype = messages.DT_DOUBLE
    tensor.tensor_shape.dim.add(size=rows)
    tensor.tensor_shape.dim.add(size=1)
    tensor.double_val.append(0.5)
    return request.SerializeToString()


def classify_request(examples: int) -> bytes:
    """A Classify of ``classifier`` with ``examples`` examples."""
    request = messages.ClassificationRequest()
    request.model_spec.name = "classifier"
    for index in range(examples):
        example = request.input.example_list.examples.add()
        features = example.features.feature
        features["a"].float_list.value.append(index / examples - 0.5)
        features["b"].float_list.value.append(0.25)
    return request.SerializeToString()


def line_infer(rows: int) -> bytes:
    """An Open Inference Protocol ModelInfer of ``line`` with ``rows`` rows."""
    request = oip.ModelInferRequest(model_name="line", id="h2-infer")
    tensor = request.inputs.add(name="x", datatype="FP64", shape=[rows, 1])
    tensor.contents.fp64_contents.extend(float(row) / rows for row in range(rows))
    return request.SerializeToString()
