"""The gateway's gRPC server: the two TF Serving services, the Open Inference
Protocol's `inference.GRPCInferenceService`, and gRPC health.

It runs on :class:`servekit_protocol.grpc_server.GrpcServer` (HTTP/2 on the event
loop) instead of grpc.aio, whose poller thread and event-loop hand-offs took
about 70% of the gateway's CPU under a cheap model's gRPC load. The API key is
checked from a call's headers before any of its body is kept. A Predict,
Classify, Regress or MultiInference message from
``GATEWAY_GRPC_PARSE_OFFLOAD_BYTES`` up is not parsed whole: only its model
specs (and a Predict's tensor shapes) are read, and its bytes are forwarded
(:mod:`gateway.clients.forwarded`, :mod:`gateway.clients.forwarded_examples`);
a ModelInfer message from that size up is read by walking its fields, its raw
inputs kept as views (:mod:`gateway.codecs.v2_spliced`), or else (typed
contents, BYTES) parsed, and its arrays made, in the JSON workers, handed
there through shared memory (:mod:`gateway.grpcfront.infer_segments`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from servekit_protocol.grpc_server import GrpcServer, OffloadedDecoder
from servekit_protocol.json_codec import BodyParsers
from servekit_protocol.oip_services import (
    INFERENCE_SERVICE,
    add_inference_service_to_server,
)
from servekit_protocol.services import (
    MODEL_SERVICE,
    PREDICTION_SERVICE,
    add_model_service_to_server,
    add_prediction_service_to_server,
)

from gateway.clients.forwarded import forwarding_decoders
from gateway.codecs.v2_grpc import InferMessage
from gateway.codecs.v2_spliced import RawInfer, read_raw_infer
from gateway.dataplane import Gateway
from gateway.grpcfront.infer_segments import read_infer
from gateway.grpcfront.inference import InferenceProxy
from gateway.grpcfront.servicer import (
    GrpcFront,
    ModelProxy,
    PredictionProxy,
    credentials_check,
)
from gateway.routes.health import ReadinessCache

logger = logging.getLogger(__name__)

READINESS_POLL_SECONDS = 1.0
"""How often gRPC health re-reads the gateway's readiness (its cache lives 1 s)."""


def create_grpc_server(
    gateway: Gateway,
) -> tuple[GrpcServer, health_aio.HealthServicer]:
    """A server with the proxies registered (not yet bound or started)."""
    settings = gateway.settings
    server = GrpcServer(
        max_receive_bytes=settings.max_body_bytes,
        max_send_bytes=-1,
        limits=settings.http2,
        authenticate=credentials_check(gateway),
    )
    front = GrpcFront(gateway)
    add_prediction_service_to_server(PredictionProxy(front), server)
    threshold = settings.grpc_parse_offload_bytes
    if threshold > 0:
        for method, decoder in forwarding_decoders(threshold).items():
            server.offload_decoding(method, decoder)
        server.offload_decoding(
            f"/{INFERENCE_SERVICE}/ModelInfer",
            OffloadedDecoder(infer_reader(gateway.parsers), threshold),
        )
    add_model_service_to_server(ModelProxy(front), server)
    add_inference_service_to_server(
        InferenceProxy(front, ReadinessCache(gateway)), server
    )
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    return server, health_servicer


def infer_reader(
    parsers: BodyParsers,
) -> Callable[[memoryview], Awaitable[InferMessage | RawInfer]]:
    """The gRPC server's decoder of large ModelInfer messages."""

    async def read(message: memoryview) -> InferMessage | RawInfer:
        """A large ModelInfer with raw inputs read for its head on the loop,
        its inputs kept as views; any other handed to a worker through shared
        memory and parsed there for its head, its arrays made there too once
        the target's dtypes are known (:mod:`gateway.grpcfront.infer_segments`).

        Raises:
            DecodeError: the message does not parse (answered as in place).
            Aborted: UNAVAILABLE when the worker died.
        """
        spliced = read_raw_infer(message)
        if spliced is not None:
            return spliced
        return await read_infer(parsers, message)

    return read


async def mark_serving(
    health_servicer: health_aio.HealthServicer, serving: bool
) -> None:
    """Report SERVING (or NOT_SERVING while draining) for every service."""
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    # TF Serving also registers the short names.
    short = (PREDICTION_SERVICE.rsplit(".", 1)[-1], MODEL_SERVICE.rsplit(".", 1)[-1])
    for service in ("", PREDICTION_SERVICE, MODEL_SERVICE, INFERENCE_SERVICE, *short):
        await health_servicer.set(service, status)


async def follow_readiness(
    health_servicer: health_aio.HealthServicer,
    readiness: ReadinessCache,
    first_check: asyncio.Event,
) -> None:
    """Keep gRPC health equal to `/readyz`: SERVING only while every backend is
    ready, so a gRPC probe or load balancer waits for the models as HTTP does.

    Sets `first_check` once health reflects the first check. Runs until cancelled
    (the caller then reports NOT_SERVING for the drain).
    """
    serving: bool | None = None
    while True:
        try:
            ready, _checks = await readiness.check()
        except Exception:  # a failed check must not freeze health at SERVING
            logger.exception("readiness check failed")
            ready = False
        if ready != serving:
            await mark_serving(health_servicer, ready)
            logger.info("gRPC health %s", "SERVING" if ready else "NOT_SERVING")
            serving = ready
        first_check.set()
        await asyncio.sleep(READINESS_POLL_SECONDS)
