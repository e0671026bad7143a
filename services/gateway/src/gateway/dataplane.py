"""The transport-agnostic gateway: one object the HTTP and gRPC adapters call.

`Gateway` composes the gateway's roles, each in its own module: admission
(`admission`: in-flight slots, deadlines, keys), routing (`routing.router`), the
signature cache (`signatures`), forwarding of Predicts (`forwarding`: REST
forwarding or translation, canary fallback, coalescing), shadow traffic
(`shadow`), and the non-Predict calls (metadata, status, Classify, Regress,
MultiInference) that go straight to the routed backend. It never imports fastapi,
starlette or grpc servers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, Protocol, TypeVar

from servekit_protocol import json_codec, messages

from gateway.admission import Admission, InFlight
from gateway.clients.answers import ReceivedAnswer
from gateway.clients.backend import BackendClient
from gateway.clients.coalescer import Coalescer
from gateway.clients.forwarded_examples import (
    ForwardedExamples,
    ForwardedMultiInference,
)
from gateway.clients.health import backend_health
from gateway.clients.pool import BackendPool
from gateway.clients.strategies import backend_strategies
from gateway.context import CallContext, apply_target, spec_version
from gateway.errors import GatewayError, InvalidInput
from gateway.forwarding import Forwarder, PredictCall, Predicted
from gateway.observability.logging import AccessLog
from gateway.observability.metrics import GatewayMetrics
from gateway.registryview import RegistryView
from gateway.routing.router import Plan, Router, Target
from gateway.security.keys import Authenticator, Principal
from gateway.settings import Settings
from gateway.shadow import Shadow
from gateway.signatures import SignatureCache


class _Targeted(Protocol):
    """A TF Serving request or answer: it names a model version."""

    @property
    def model_spec(self) -> messages.ModelSpec: ...


_Request = TypeVar("_Request", bound=_Targeted)
_Answer = TypeVar("_Answer", bound=_Targeted)
_Send = Callable[
    [Sequence[str], _Request, float, Sequence[tuple[str, str]]], Awaitable[_Answer]
]

READINESS_TIMEOUT_SECONDS = 2.0
"""How long `/readyz` waits for the backends' status answers."""


class Gateway:
    """Everything between a parsed request and a backend response."""

    def __init__(
        self,
        settings: Settings,
        metrics: GatewayMetrics,
        router: Router,
        pool: BackendPool,
        authenticator: Authenticator,
        registry: RegistryView | None,
        access_log: AccessLog | None = None,
    ) -> None:
        self.settings = settings
        self.access_log = (
            access_log
            if access_log is not None
            else AccessLog(None, enabled=settings.access_log)
        )
        self.metrics = metrics
        self.router = router
        self.pool = pool
        self.client = BackendClient(pool)
        self.registry = registry
        self.gatekeeper = Admission(settings, metrics, authenticator)
        self.parsers = json_codec.BodyParsers(
            settings.json_offload_bytes,
            settings.json_workers,
            settings.json_answer_offload_elements,
            settings.shared_memory_dir,
        )
        # `coalesced_requests` records how many callers each backend call served.
        self.coalescer = Coalescer(
            backend_strategies(self.client, self.parsers),
            metrics.coalesced_requests.observe,
            max_rows=settings.coalesce_max_rows,
            max_elements=settings.max_request_tensor_elements,
            max_bytes=settings.max_request_tensor_bytes,
            max_in_flight=settings.coalesce_max_in_flight,
        )
        self.signatures = SignatureCache(self.client, settings.metadata_ttl_seconds)
        self.shadow = Shadow(
            self.coalescer,
            metrics,
            timeout_ms=settings.default_timeout_ms,
            max_tasks=settings.max_in_flight // 2,
            keep_from=settings.grpc_parse_offload_bytes or None,
        )
        self.forwarder = Forwarder(
            pool, self.client, self.coalescer, self.signatures, router, self.shadow
        )

    @property
    def authenticator(self) -> Authenticator:
        """The API keys in force (the reloader swaps their contents)."""
        return self.gatekeeper.authenticator

    # ---- admission -------------------------------------------------------------

    def admission(self) -> InFlight:
        """A slot among `max_in_flight`, held while the `with` block runs.

        Raises (on entering):
            Overloaded: `max_in_flight` requests are already being served.
        """
        return self.gatekeeper.slots

    def deadline(self, timeout_ms: float | None) -> float:
        """Absolute deadline from a client timeout, capped by `max_timeout_ms`."""
        return self.gatekeeper.deadline(timeout_ms)

    def authorize(
        self,
        model: str,
        authorization: str | None,
        api_key: str | None,
        client: str = "",
    ) -> Principal:
        """Authenticate the caller (failed attempts counted against `client`, its
        address) and check the model is in its scopes and rate.

        Raises:
            Unauthenticated, PermissionDenied, RateLimited.
        """
        return self.gatekeeper.authorize(model, authorization, api_key, client)

    # ---- routing ---------------------------------------------------------------

    def plan(
        self,
        ctx: CallContext,
        model: str,
        version: int | None,
        label: str | None,
    ) -> Plan:
        """Where a request for the model goes (primary, shadow), counted per role."""
        plan = self.router.plan(model, version, label, ctx.headers)
        ctx.model = model
        ctx.route = plan.primary.role
        self.metrics.count_route(model, plan.primary.role)
        return plan

    async def _to_primary(
        self,
        ctx: CallContext,
        plan: Plan,
        request: _Request,
        send: _Send[_Request, _Answer],
    ) -> _Answer:
        """`request`, aimed at the plan's primary target, sent to its backends with
        the call's deadline and metadata; the version that answered goes into
        `ctx` for the access log.

        Raises:
            GatewayError: from the backend, or the deadline.
        """
        apply_target(request.model_spec, plan.primary)
        response = await send(
            plan.primary.backends, request, ctx.deadline, ctx.metadata()
        )
        if response.model_spec.HasField("version"):
            ctx.version = str(response.model_spec.version.value)
        return response

    # ---- inference -------------------------------------------------------------

    async def predict(
        self, ctx: CallContext, plan: Plan, call: PredictCall
    ) -> Predicted:
        """The one Predict entry point of every adapter: forwarded as REST or
        translated, with canary fallback and shadowing (see `forwarding`).

        Raises:
            GatewayError: from encoding (400), the backend, or the deadline.
            ProtocolError: an answer that cannot be decoded into arrays.
        """
        return await self.forwarder.predict(ctx, plan, call)

    async def classify(
        self,
        ctx: CallContext,
        model: str,
        version: int | None,
        label: str | None,
        request: messages.ClassificationRequest | ForwardedExamples,
    ) -> messages.ClassificationResponse | ReceivedAnswer:
        """A large answer stays its bytes where ``ctx.keep_answer_from`` says."""
        plan = self.plan(ctx, model, version, label)
        send = partial(self.client.classify, keep_from=ctx.keep_answer_from)
        return await self._to_primary(ctx, plan, request, send)

    async def regress(
        self,
        ctx: CallContext,
        model: str,
        version: int | None,
        label: str | None,
        request: messages.RegressionRequest | ForwardedExamples,
    ) -> messages.RegressionResponse | ReceivedAnswer:
        """A large answer stays its bytes where ``ctx.keep_answer_from`` says."""
        plan = self.plan(ctx, model, version, label)
        send = partial(self.client.regress, keep_from=ctx.keep_answer_from)
        return await self._to_primary(ctx, plan, request, send)

    async def multi_inference(
        self,
        ctx: CallContext,
        request: messages.MultiInferenceRequest | ForwardedMultiInference,
    ) -> messages.MultiInferenceResponse | ReceivedAnswer:
        """MultiInference: every task names the same model (as TF Serving requires).
        A large answer stays its bytes where ``ctx.keep_answer_from`` says.

        Raises:
            InvalidInput: no tasks, or tasks for different models.
        """
        names = {task.model_spec.name for task in request.tasks}
        if len(names) != 1:
            raise InvalidInput(
                "All ModelSpecs in a MultiInferenceRequest must access the same "
                "model name."
            )
        first = request.tasks[0].model_spec
        version, label = spec_version(first)
        plan = self.plan(ctx, first.name, version, label)
        for task in request.tasks:
            apply_target(task.model_spec, plan.primary)
        return await self.client.multi_inference(
            plan.primary.backends,
            request,
            ctx.deadline,
            ctx.metadata(),
            ctx.keep_answer_from,
        )

    # ---- metadata and status -----------------------------------------------------

    async def metadata(
        self,
        ctx: CallContext,
        model: str,
        version: int | None,
        label: str | None,
    ) -> tuple[messages.GetModelMetadataResponse, Target]:
        """A backend's GetModelMetadata answer for the routed target."""
        plan = self.plan(ctx, model, version, label)
        request = messages.GetModelMetadataRequest()
        request.metadata_field.append("signature_def")
        response = await self._to_primary(
            ctx, plan, request, self.client.model_metadata
        )
        return response, plan.primary

    async def metadata_request(
        self, ctx: CallContext, request: messages.GetModelMetadataRequest
    ) -> messages.GetModelMetadataResponse:
        """Forward a GetModelMetadata request to the routed target."""
        version, label = spec_version(request.model_spec)
        plan = self.plan(ctx, request.model_spec.name, version, label)
        forwarded = messages.GetModelMetadataRequest()
        forwarded.CopyFrom(request)
        return await self._to_primary(ctx, plan, forwarded, self.client.model_metadata)

    async def status(
        self,
        ctx: CallContext,
        model: str,
        version: int | None,
        label: str | None,
    ) -> messages.GetModelStatusResponse:
        """GetModelStatus on the model's backend; without version: all versions."""
        ctx.model = model
        ctx.route = "status"
        request = messages.GetModelStatusRequest()
        request.model_spec.name = model
        if version is not None:
            request.model_spec.version.value = version
        elif label is not None:
            request.model_spec.version_label = label
        plan = self.router.plan(model, version, label, None)
        return await self.client.model_status(
            plan.primary.backends, request, ctx.deadline, ctx.metadata()
        )

    # ---- readiness and lifecycle -------------------------------------------------

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Every backend's health SERVING (see `clients.health`), every routed
        model with an AVAILABLE version, and the JSON workers started."""
        deadline = time.monotonic() + READINESS_TIMEOUT_SECONDS
        checks: dict[str, Any] = {}
        ready = True
        routed = dict(self.router.routes.routes)

        async def status_of(
            model: str,
        ) -> messages.GetModelStatusResponse | GatewayError:
            # A context each: a call records its model and version in it.
            ctx = CallContext(
                request_id="readyz", protocol="internal", deadline=deadline
            )
            try:
                return await self.status(ctx, model, None, None)
            except GatewayError as exc:
                return exc

        # All at once: one after the other, a few dozen models on a loaded
        # machine could not all answer within the one deadline.
        statuses = await asyncio.gather(*(status_of(model) for model in routed))
        for model, status in zip(routed, statuses, strict=True):
            if isinstance(status, GatewayError):
                checks[model] = f"error: {status.message}"
                ready = False
                continue
            available = [
                entry.version
                for entry in status.model_version_status
                if entry.state == messages.ModelVersionStatus.State.AVAILABLE
            ]
            checks[model] = (
                {"available": available} if available else "no version AVAILABLE"
            )
            ready = ready and bool(available)
        # Each backend's own readiness: a model server is ready only when every
        # model it serves has loaded, including models no route names.
        backends = {
            self.router.default_backend,
            *self.settings.framework_backends.values(),
            *(
                address
                for model in routed
                for address in self.router.backends_of(model)
            ),
        }
        answers = await asyncio.gather(
            *(
                backend_health(self.pool.get(address), READINESS_TIMEOUT_SECONDS / 2)
                for address in sorted(backends)
            )
        )
        for address, answer in zip(sorted(backends), answers, strict=True):
            checks[address] = answer.value
            ready = ready and answer.ready
        if not self.parsers.started:
            # A large body would wait for their start (seconds on a loaded
            # machine); the key cannot be a model name or an address.
            checks["json workers"] = "starting"
            ready = False
        return ready, checks

    async def close(self) -> None:
        self.parsers.close()
        await self.shadow.close()
        await self.pool.close()
        self.access_log.flush()
