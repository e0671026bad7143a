"""The gRPC server (TF Serving's ``--port``), on the process's event loop.

The transport is :class:`servekit_protocol.grpc_server.GrpcServer`: HTTP/2 (``h2``)
in the event loop's thread, with grpc.aio's registration API, so the servicers
and the standard health servicer run unchanged. grpc.aio's C core hands each
event of a call to the loop from a poller thread, which cost the `tabular` model
about 0.3 ms a call at one client and capped a cheap model near 1,500 calls/s.

Services: ``tensorflow.serving.PredictionService``, ``tensorflow.serving.ModelService``
and, unless disabled, the standard ``grpc.health.v1.Health``. Health reports
NOT_SERVING for ``""``, both fully qualified service names and TF Serving's short
names (``PredictionService``, ``ModelService``) until the initial model loads
finish, SERVING afterwards, and NOT_SERVING again from the start of a shutdown.

Message size: gRPC's 4 MiB default is far too small for image batches, so both
the receive and the send limit are raised to ``max_message_bytes`` (servekit's
``Settings.grpc_max_message_bytes``, 256 MiB by default; TF Serving removes the
limit altogether). ``--grpc_channel_arguments`` (``key=value,key=value``) are
applied after these defaults and may override them; values that parse as
integers are passed as integers, as TF Serving does.

Large messages: a ``Predict``, ``Classify``, ``Regress`` or ``MultiInference``
message from ``parse_offload_bytes`` up is parsed, and its tensors or
tf.Examples decoded, in the JSON worker processes
(:mod:`modelserver.protocol.grpc.largerequests`,
:mod:`modelserver.protocol.grpc.largeexamples`), not on the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from servekit_protocol.grpc_server import GrpcServer as Http2GrpcServer
from servekit_protocol.grpc_server import Http2Limits, OffloadedDecoder
from servekit_protocol.json_codec import BodyParsers
from servekit_protocol.services import (
    MODEL_SERVICE,
    PREDICTION_SERVICE,
    add_model_service_to_server,
    add_prediction_service_to_server,
)

from modelserver.dataplane import DataPlane
from modelserver.protocol.grpc.largeanswers import AnswerWriter
from modelserver.protocol.grpc.largeexamples import large_message_decoders
from modelserver.protocol.grpc.servicer import ModelServicer, PredictionServicer

logger = logging.getLogger(__name__)

HEALTH_SERVICE_NAMES = (
    "",
    PREDICTION_SERVICE,
    MODEL_SERVICE,
    "PredictionService",
    "ModelService",
)
"""Names the health service answers for (TF Serving registers the short ones)."""

ChannelOption = tuple[str, int | str]
_TRANSPORT_OPTIONS = frozenset(
    (
        "grpc.max_receive_message_length",
        "grpc.max_send_message_length",
        "grpc.so_reuseport",
    )
)


def parse_channel_arguments(text: str) -> list[ChannelOption]:
    """Parse ``--grpc_channel_arguments`` (``key=value`` pairs, comma separated).

    Raises:
        ValueError: A pair has no ``=``.
    """
    options: list[ChannelOption] = []
    for pair in text.split(","):
        pair = pair.strip()
        if not pair:
            continue
        key, separator, value = pair.partition("=")
        if not separator or not key.strip():
            raise ValueError(f"grpc channel argument {pair!r} is not key=value")
        value = value.strip()
        try:
            options.append((key.strip(), int(value)))
        except ValueError:
            options.append((key.strip(), value))
    return options


def server_options(
    max_message_bytes: int, channel_arguments: Sequence[ChannelOption]
) -> list[ChannelOption]:
    """The options the server is built with (defaults, then the user's)."""
    merged: dict[str, int | str] = {
        "grpc.max_receive_message_length": max_message_bytes,
        "grpc.max_send_message_length": max_message_bytes,
        # Without this a second server could bind the same port silently.
        "grpc.so_reuseport": 0,
    }
    merged.update(channel_arguments)
    return list(merged.items())


class GrpcServer:
    """PredictionService, ModelService and health on one server.

    Args:
        dataplane: Where every RPC goes.
        host: Address to bind.
        port: TCP port (0 picks a free one; see :attr:`port`); ``None`` for
            none (only ``socket_path``).
        max_message_bytes: Receive and send limit.
        channel_arguments: Extra server options (``--grpc_channel_arguments``).
        socket_path: Also listen on this UNIX socket when set.
        enable_health: Serve ``grpc.health.v1.Health``.
        packed_outputs: Answer Predict with ``tensor_content`` rather than
            the typed fields.
        grace: Seconds in-flight RPCs get to finish on :meth:`stop`.
        limits: HTTP/2 limits (``Settings.http2``).
        parsers: The worker processes that parse large Predict messages.
        parse_offload_bytes: Predict messages this large or larger are parsed
            in ``parsers``; 0 parses every one on the event loop.
    """

    def __init__(
        self,
        dataplane: DataPlane,
        *,
        host: str,
        port: int | None,
        max_message_bytes: int,
        channel_arguments: Sequence[ChannelOption] = (),
        socket_path: str = "",
        enable_health: bool = True,
        packed_outputs: bool = False,
        grace: float = 25.0,
        limits: Http2Limits | None = None,
        parsers: BodyParsers | None = None,
        parse_offload_bytes: int = 0,
    ) -> None:
        self._address = (
            None
            if port is None
            else f"[{host}]:{port}"
            if ":" in host
            else f"{host}:{port}"
        )
        self._socket_path = socket_path
        options = dict(server_options(max_message_bytes, channel_arguments))
        ignored = sorted(set(options) - _TRANSPORT_OPTIONS)
        if ignored:
            logger.warning(
                "gRPC channel arguments without effect here: %s", ", ".join(ignored)
            )
        self._server = Http2GrpcServer(
            max_receive_bytes=int(options["grpc.max_receive_message_length"]),
            max_send_bytes=int(options["grpc.max_send_message_length"]),
            limits=limits,
        )
        add_prediction_service_to_server(
            PredictionServicer(
                dataplane, packed_outputs=packed_outputs, answers=AnswerWriter(parsers)
            ),
            self._server,
        )
        if parsers is not None and parse_offload_bytes > 0:
            for method, decoder in large_message_decoders(
                parsers, dataplane.tensor_limits
            ).items():
                self._server.offload_decoding(
                    f"/{PREDICTION_SERVICE}/{method}",
                    OffloadedDecoder(decoder, parse_offload_bytes),
                )
        add_model_service_to_server(ModelServicer(dataplane), self._server)
        self._health: health.aio.HealthServicer | None = None
        if enable_health:
            self._health = health.aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self._port = port or 0
        self._grace = grace

    @property
    def port(self) -> int:
        """The bound TCP port (after :meth:`start`)."""
        return self._port

    async def start(self) -> None:
        """Bind and start serving (health NOT_SERVING until :meth:`set_serving`).

        Raises:
            OSError: The address cannot be bound.
        """
        if self._health is not None:
            for name in HEALTH_SERVICE_NAMES:
                await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        addresses = [self._address] if self._address is not None else []
        if self._socket_path:
            addresses.append(f"unix:{self._socket_path}")
        for address in addresses:
            try:
                bound = self._server.add_insecure_port(address)
            except (OSError, ValueError) as exc:
                raise OSError(f"cannot bind gRPC to {address}: {exc}") from exc
            if address == self._address:
                self._port = bound
        await self._server.start()
        for address in addresses:
            logger.info(
                "Running gRPC ModelServer at %s",
                address,
                extra={"grpc_port": self._port},
            )

    async def set_serving(self, serving: bool = True) -> None:
        """Report SERVING (the models are loaded) or NOT_SERVING on every
        health name."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        if self._health is not None:
            for name in HEALTH_SERVICE_NAMES:
                await self._health.set(name, status)

    async def stop(self) -> None:
        """Stop accepting RPCs and give in-flight ones ``grace`` seconds."""
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        await self._server.stop(self._grace)
