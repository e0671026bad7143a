"""PredictionService and ModelService proxies: authenticate, route, forward.

Credentials come from metadata (`authorization: Bearer <key>` or `x-api-key`), the
deadline from the client's gRPC deadline (capped), the request id from
`x-request-id` (generated when absent) and goes back as trailing metadata. Errors use
the same table as HTTP (`gateway.errors`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from servekit_protocol import messages
from servekit_protocol.errors import ProtocolError
from servekit_protocol.grpc_server import Authenticate
from servekit_protocol.grpcweb_server import SERVICE_PREFIX, Aborted
from servekit_protocol.logs import (
    REQUEST_ID_HEADER,
    accept_request_id,
    bind_model,
    bind_request,
)
from servekit_protocol.messages import Serialized
from servekit_protocol.oip_services import INFERENCE_SERVICE
from servekit_protocol.services import (
    ModelServiceServicer,
    PredictionServiceServicer,
    ServicerContext,
)
from servekit_protocol.tensor_limits import check_tensor_protos

from gateway.clients.forwarded import ForwardedPredict
from gateway.clients.forwarded_examples import (
    ForwardedExamples,
    ForwardedMultiInference,
)
from gateway.context import CallContext, spec_version
from gateway.dataplane import Gateway
from gateway.errors import (
    DeadlineExceeded,
    GatewayError,
    InvalidInput,
    internal_error_message,
)
from gateway.forwarding import PredictCall
from gateway.security.credentials import client_host

logger = logging.getLogger(__name__)

PROTOCOL = "grpc"
Response = TypeVar("Response")


# The Open Inference Protocol's server health and metadata need no key, as on HTTP.
OPEN_METHODS = frozenset(
    f"/{INFERENCE_SERVICE}/{name}"
    for name in ("ServerLive", "ServerReady", "ServerMetadata")
)


def needs_key(method: str) -> bool:
    """Whether a gRPC method path is one of the model methods that need a key."""
    if method.startswith(SERVICE_PREFIX):
        return True
    return method.startswith(f"/{INFERENCE_SERVICE}/") and method not in OPEN_METHODS


def credentials_check(gateway: Gateway) -> Authenticate:
    """The gRPC server's header hook: a TF Serving call without a valid API key
    is refused from its headers, before any of its body is kept (the scope and
    the rate, which need the model name, are checked when the call runs)."""

    def check(
        method: str, metadata: tuple[tuple[str, str | bytes], ...], peer: str
    ) -> None:
        if not needs_key(method):
            return
        headers = {key: value for key, value in metadata if isinstance(value, str)}
        try:
            gateway.gatekeeper.authenticate(headers, client_host(peer))
        except GatewayError as exc:
            gateway.metrics.observe_request(
                "", "", "", PROTOCOL, exc.grpc_code.name, 0.0
            )
            trailing = [
                (REQUEST_ID_HEADER, accept_request_id(headers.get(REQUEST_ID_HEADER)))
            ]
            trailing.extend((k.lower(), v) for k, v in exc.headers().items())
            raise Aborted(exc.grpc_code, exc.public_message(), trailing) from None

    return check


def _client(context: ServicerContext) -> str:
    # gRPC-Web calls run with a context that has no peer: their endpoint has
    # checked the key against the HTTP client's address before reading the body.
    peer = getattr(context, "peer", None)
    return client_host(peer()) if callable(peer) else ""


class GrpcFront:
    """The policy every gRPC method shares (mirror of `routes.handling.serve_http`)."""

    def __init__(self, gateway: Gateway, protocol: str = PROTOCOL) -> None:
        self.gateway = gateway
        self.protocol = protocol
        """Label of the calls in metrics and logs (`grpc-web` on the HTTP port)."""

    async def serve(
        self,
        context: ServicerContext,
        method: str,
        model: str,
        handle: Callable[[CallContext], Awaitable[Response]],
        missing_model: str = "ModelSpec has no name specified.",
    ) -> Response:
        """Run ``handle`` under the gateway's policy; ``missing_model`` is the
        INVALID_ARGUMENT message TF Serving gives this method without a model."""
        gateway = self.gateway
        metadata: dict[str, str] = {}
        for key, value in context.invocation_metadata() or ():
            if isinstance(value, str):
                metadata[key.lower()] = value
        request_id = accept_request_id(metadata.get(REQUEST_ID_HEADER))
        protocol = self.protocol
        bind_request(request_id, protocol)
        remaining = context.time_remaining()
        ctx = CallContext(
            request_id=request_id,
            protocol=protocol,
            deadline=gateway.deadline(
                remaining * 1000.0 if remaining is not None else None
            ),
            headers=metadata,
            client=_client(context),
            model=model,
        )
        trailing = [(REQUEST_ID_HEADER, request_id)]
        code = grpc.StatusCode.OK
        failure: GatewayError | None = None
        try:
            if remaining is not None and remaining <= 0:
                # Already past (gRPC-Web's `grpc-timeout: 0n`, or a call that
                # waited out its deadline): grpc answers these before any handler
                # runs, so no model name or key is looked at.
                raise DeadlineExceeded("Deadline Exceeded")
            with gateway.admission():
                bind_model(model)
                if not model:
                    raise InvalidInput(missing_model)
                gateway.authorize(
                    model,
                    metadata.get("authorization"),
                    metadata.get("x-api-key"),
                    ctx.client,
                )
                result = await handle(ctx)
        except GatewayError as exc:
            failure = exc
            if exc.http_status >= 500:
                # As the HTTP routes log theirs: the access line has only the code.
                logger.warning("request failed: %s", exc.message)
        except ProtocolError as exc:
            failure = InvalidInput(exc.message)
        except Exception:
            logger.exception("unexpected error in %s", method)
            failure = GatewayError(internal_error_message())
        if failure is not None:
            code = failure.grpc_code
            trailing.extend(
                (key.lower(), value) for key, value in failure.headers().items()
            )
        self._finish(ctx, method, code)
        if failure is not None:
            await context.abort(
                code, failure.public_message(), trailing_metadata=tuple(trailing)
            )
        context.set_trailing_metadata(tuple(trailing))
        return result

    def _finish(self, ctx: CallContext, method: str, code: grpc.StatusCode) -> None:
        elapsed = time.perf_counter() - ctx.started
        known = code not in (
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.PERMISSION_DENIED,
        )
        self.gateway.metrics.observe_request(
            ctx.model if known else "",
            ctx.version,
            ctx.route,
            self.protocol,
            code.name,
            elapsed,
        )
        access_log = self.gateway.access_log
        if access_log.enabled:
            bind_model(ctx.model, ctx.version or None)
            access_log.write(
                f"{method} {code.name}",
                status=code.name,
                duration_ms=round(elapsed * 1000, 3),
            )


class PredictionProxy(PredictionServiceServicer):
    """`tensorflow.serving.PredictionService` in front of the routed backends."""

    def __init__(self, front: GrpcFront) -> None:
        self._front = front
        self._gateway = front.gateway
        threshold = front.gateway.settings.grpc_parse_offload_bytes
        self._keep_answer_from = threshold if threshold > 0 else None
        """Answers from this size go back as the backend sent them
        (`clients.answers`): the client gets the message unchanged."""

    async def Predict(
        self,
        request: messages.PredictRequest | ForwardedPredict,
        context: ServicerContext,
    ) -> messages.PredictResponse | Serialized:
        """A large message comes as a `ForwardedPredict` (only its spec and
        tensor shapes read); it is routed, checked and answered the same way,
        its large answer as the backend's bytes."""
        version, label = spec_version(request.model_spec)

        async def handle(ctx: CallContext) -> messages.PredictResponse | Serialized:
            # A ForwardedPredict's inputs carry the fields the limits read.
            check_tensor_protos(
                request.inputs.values(), self._gateway.gatekeeper.tensor_limits
            )
            plan = self._gateway.plan(ctx, request.model_spec.name, version, label)
            ctx.keep_answer_from = self._keep_answer_from
            call = PredictCall(lambda _signatures: request, needs_signatures=False)
            response = (await self._gateway.predict(ctx, plan, call)).translated
            # A proto request is answered with a proto, or its bytes.
            assert isinstance(response, messages.PredictResponse | Serialized)
            return response

        return await self._front.serve(
            context, "Predict", request.model_spec.name, handle
        )

    async def Classify(
        self,
        request: messages.ClassificationRequest | ForwardedExamples,
        context: ServicerContext,
    ) -> messages.ClassificationResponse | Serialized:
        """A large message comes as a `ForwardedExamples` (only its spec
        read); it is routed, checked and answered the same way."""
        version, label = spec_version(request.model_spec)

        async def handle(
            ctx: CallContext,
        ) -> messages.ClassificationResponse | Serialized:
            ctx.keep_answer_from = self._keep_answer_from
            return await self._gateway.classify(
                ctx, request.model_spec.name, version, label, request
            )

        return await self._front.serve(
            context, "Classify", request.model_spec.name, handle
        )

    async def Regress(
        self,
        request: messages.RegressionRequest | ForwardedExamples,
        context: ServicerContext,
    ) -> messages.RegressionResponse | Serialized:
        version, label = spec_version(request.model_spec)

        async def handle(ctx: CallContext) -> messages.RegressionResponse | Serialized:
            ctx.keep_answer_from = self._keep_answer_from
            return await self._gateway.regress(
                ctx, request.model_spec.name, version, label, request
            )

        return await self._front.serve(
            context, "Regress", request.model_spec.name, handle
        )

    async def MultiInference(
        self,
        request: messages.MultiInferenceRequest | ForwardedMultiInference,
        context: ServicerContext,
    ) -> messages.MultiInferenceResponse | Serialized:
        """A large message comes as a `ForwardedMultiInference` (only its
        tasks read); it is checked, routed and answered the same way."""
        model = request.tasks[0].model_spec.name if request.tasks else ""

        async def handle(
            ctx: CallContext,
        ) -> messages.MultiInferenceResponse | Serialized:
            ctx.keep_answer_from = self._keep_answer_from
            return await self._gateway.multi_inference(ctx, request)

        return await self._front.serve(context, "MultiInference", model, handle)

    async def GetModelMetadata(
        self, request: messages.GetModelMetadataRequest, context: ServicerContext
    ) -> messages.GetModelMetadataResponse:
        async def handle(ctx: CallContext) -> messages.GetModelMetadataResponse:
            return await self._gateway.metadata_request(ctx, request)

        return await self._front.serve(
            context, "GetModelMetadata", request.model_spec.name, handle
        )


class ModelProxy(ModelServiceServicer):
    """`tensorflow.serving.ModelService`: status is forwarded; reloading the
    backends' config is not the gateway's to do (UNIMPLEMENTED)."""

    def __init__(self, front: GrpcFront) -> None:
        self._front = front
        self._gateway = front.gateway

    async def GetModelStatus(
        self, request: messages.GetModelStatusRequest, context: ServicerContext
    ) -> messages.GetModelStatusResponse:
        version, label = spec_version(request.model_spec)

        async def handle(ctx: CallContext) -> messages.GetModelStatusResponse:
            return await self._gateway.status(
                ctx, request.model_spec.name, version, label
            )

        return await self._front.serve(
            context,
            "GetModelStatus",
            request.model_spec.name,
            handle,
            # TF Serving's GetModelStatusImpl.
            "Missing ModelSpec"
            if not request.HasField("model_spec")
            else "Missing model name in request.",
        )

    async def HandleReloadConfigRequest(
        self, request: messages.ReloadConfigRequest, context: ServicerContext
    ) -> messages.ReloadConfigResponse:
        del request
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "reload the model servers' configuration on the model servers themselves",
        )
        raise AssertionError("abort returns only by raising")
