"""The transport-agnostic gateway: admission, auth, routing, signatures, backend calls.

The HTTP and gRPC adapters parse their wire format, then call `Gateway`, which
decides where a request goes (routes, canary, shadow), fetches and caches the
model's signatures, calls the backend through `clients.backend`, mirrors shadow
traffic, and counts everything. It never imports fastapi, starlette or grpc servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import numpy as np
from servekit_protocol import json_codec, messages
from servekit_protocol.errors import ProtocolError
from servekit_protocol.tensors import numpy_dtype

from gateway.clients.arrays import Array, ArrayRequest, ArrayResponse
from gateway.clients.backend import BackendClient, BackendPool
from gateway.clients.coalescer import Coalescer, Request, Response
from gateway.clients.http import HttpAnswer
from gateway.clients.restbatch import rest_predict
from gateway.errors import (
    BackendError,
    GatewayError,
    InvalidInput,
    ModelNotFound,
    Overloaded,
)
from gateway.observability.logging import AccessLog
from gateway.observability.metrics import GatewayMetrics
from gateway.registryview import RegistryView
from gateway.routing.router import CANARY_ROLE, Plan, Router, Target
from gateway.security.keys import Authenticator, Principal, extract_key
from gateway.settings import Settings

logger = logging.getLogger(__name__)

REQUEST_ID_METADATA = "x-request-id"
DEFAULT_SIGNATURE = "serving_default"
SHADOW_RTOL = 1e-5
SHADOW_ATOL = 1e-6


@dataclass(slots=True)
class CallContext:
    """One request as the dataplane sees it; the adapters fill it in."""

    request_id: str
    protocol: str
    deadline: float
    """Absolute `time.monotonic()` deadline."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Lower-cased request headers (or gRPC metadata), for sticky routing."""
    started: float = field(default_factory=time.perf_counter)
    model: str = ""
    version: str = ""
    route: str = ""

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC metadata for backend calls: the request id travels along."""
        return ((REQUEST_ID_METADATA, self.request_id),)


@dataclass(frozen=True, slots=True)
class SignatureSet:
    """A model version's signature defs, as its backend reported them."""

    model: str
    version: int | None
    signatures: Mapping[str, messages.SignatureDef]
    pinned: bool
    """True when fetched for an explicit version (immutable, never expires)."""
    specs: dict[str, Mapping[str, json_codec.TensorSpec]] = field(
        default_factory=dict, compare=False, repr=False
    )
    """Per signature, the JSON codec's input specs (built once, on first use)."""

    def get(self, name: str) -> messages.SignatureDef:
        """The named signature (empty name: `serving_default`).

        Raises:
            InvalidInput: no such signature.
        """
        key = name or DEFAULT_SIGNATURE
        signature = self.signatures.get(key)
        if signature is None:
            raise InvalidInput(
                f"model {self.model!r} has no signature {key!r} "
                f"(it has: {', '.join(sorted(self.signatures)) or 'none'})"
            )
        return signature

    def input_specs(self, name: str) -> Mapping[str, json_codec.TensorSpec]:
        """The codec's view of a signature's inputs.

        Raises:
            InvalidInput: no such signature.
        """
        specs = self.specs.get(name)
        if specs is None:
            specs = json_codec.specs_from_tensor_infos(self.get(name).inputs)
            self.specs[name] = specs
        return specs

    def input_dtypes(self, name: str) -> dict[str, np.dtype[Any]]:
        """Numpy dtypes of a signature's inputs, for converting client data."""
        signature = self.signatures.get(name or DEFAULT_SIGNATURE)
        if signature is None:
            return {}
        dtypes: dict[str, np.dtype[Any]] = {}
        for key, info in signature.inputs.items():
            with contextlib.suppress(ProtocolError):
                dtypes[key] = numpy_dtype(info.dtype)
        return dtypes


@dataclass(slots=True)
class _CacheEntry:
    value: SignatureSet
    expires: float


def apply_target(spec: messages.ModelSpec, target: Target) -> None:
    """Point a request's ModelSpec at the chosen target (keeps signature_name)."""
    spec.name = target.model
    spec.ClearField("version")
    spec.ClearField("version_label")
    if target.version is not None:
        spec.version.value = target.version
    elif target.label is not None:
        spec.version_label = target.label


def _is_missing_label(exc: BackendError) -> bool:
    return "label" in exc.message.lower() and exc.code.name in (
        "NOT_FOUND",
        "INVALID_ARGUMENT",
        "FAILED_PRECONDITION",
    )


def output_arrays(response: Response) -> dict[str, Array]:
    """The outputs of either kind of answer as arrays.

    Raises:
        ProtocolError: an output cannot be decoded.
    """
    if isinstance(response, ArrayResponse):
        return response.outputs
    return ArrayResponse.from_proto(response).outputs


def outputs_agree(first: Response, second: Response) -> bool:
    """Whether two predictions match (numbers within a small tolerance)."""
    try:
        lefts = output_arrays(first)
        rights = output_arrays(second)
    except ProtocolError:
        return False
    if set(lefts) != set(rights):
        return False
    for key, left in lefts.items():
        right = rights[key]
        if left.shape != right.shape:
            return False
        if left.dtype.kind in "biufc" and right.dtype.kind in "biufc":
            if not np.allclose(left, right, rtol=SHADOW_RTOL, atol=SHADOW_ATOL):
                return False
        elif not np.array_equal(left, right):
            return False
    return True


class Admission:
    """The count of requests in flight, as a reusable context manager (one per
    gateway): a generator-based one costs a few objects per request."""

    def __init__(self, limit: int, metrics: GatewayMetrics) -> None:
        self.limit = limit
        self.in_flight = 0
        self._gauge = metrics.in_flight
        self._rejections = metrics.rejections.labels("overloaded")

    def __enter__(self) -> None:
        if self.in_flight >= self.limit:
            self._rejections.inc()
            raise Overloaded(
                f"too many requests in flight ({self.limit}); retry shortly"
            )
        self.in_flight += 1
        self._gauge.inc()

    def __exit__(self, *exc_info: object) -> None:
        self.in_flight -= 1
        self._gauge.dec()


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
        self.coalescer = Coalescer(
            self.client,
            metrics,
            max_rows=settings.coalesce_max_rows,
            max_in_flight=settings.coalesce_max_in_flight,
        )
        self.authenticator = authenticator
        self.registry = registry
        self._admission = Admission(settings.max_in_flight, metrics)
        self._signatures: dict[tuple[Any, ...], _CacheEntry] = {}
        self._pending: dict[tuple[Any, ...], asyncio.Future[SignatureSet]] = {}
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self._max_shadow_tasks = max(1, settings.max_in_flight // 2)

    # ---- admission -------------------------------------------------------------

    def admission(self) -> Admission:
        """A slot among `max_in_flight`, held while the `with` block runs.

        Raises (on entering):
            Overloaded: `max_in_flight` requests are already being served.
        """
        return self._admission

    def deadline(self, timeout_ms: float | None) -> float:
        """Absolute deadline from a client timeout, capped by `max_timeout_ms`."""
        wanted = (
            self.settings.default_timeout_ms
            if timeout_ms is None or timeout_ms <= 0
            else timeout_ms
        )
        return time.monotonic() + min(wanted, self.settings.max_timeout_ms) / 1000.0

    def authorize(
        self, model: str, authorization: str | None, api_key: str | None
    ) -> Principal:
        """Authenticate the caller and check the model is in its scopes and rate.

        Raises:
            Unauthenticated, PermissionDenied, RateLimited.
        """
        try:
            principal = self.authenticator.authenticate(
                extract_key(authorization, api_key)
            )
            self.authenticator.authorize(principal, model)
        except GatewayError as exc:
            self.metrics.rejections.labels(type(exc).__name__).inc()
            raise
        return principal

    # ---- routing and signatures ------------------------------------------------

    def plan(
        self,
        ctx: CallContext,
        model: str,
        version: int | None,
        label: str | None,
    ) -> Plan:
        plan = self.router.plan(model, version, label, ctx.headers)
        ctx.model = model
        ctx.route = plan.primary.role
        self.metrics.count_route(model, plan.primary.role)
        return plan

    def _stable_fallback(self, target: Target) -> Target:
        return self.router.stable_target(target.model)

    async def signatures(self, target: Target, ctx: CallContext) -> SignatureSet:
        """The target's signatures, from cache when possible (one fetch at a time).

        Raises:
            GatewayError: the backend could not tell (404 unknown model, 503 ...).
        """
        key = (target.backends, target.model, target.version, target.label)
        entry = self._signatures.get(key)
        now = time.monotonic()
        if entry is not None and (entry.value.pinned or entry.expires > now):
            return entry.value
        while (pending := self._pending.get(key)) is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not pending.cancelled() or (task is not None and task.cancelling()):
                    raise
                # The request that was fetching went away; fetch for ourselves.
        future: asyncio.Future[SignatureSet] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending[key] = future
        try:
            value = await self._fetch_signatures(target, ctx)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            # Nobody else may be waiting; retrieving marks the exception as seen.
            future.exception()
            raise
        finally:
            del self._pending[key]
        if len(self._signatures) > 4096:
            self._signatures.clear()
        self._signatures[key] = _CacheEntry(
            value, now + self.settings.metadata_ttl_seconds
        )
        future.set_result(value)
        return value

    def forget_signatures(self, target: Target) -> None:
        self._signatures.pop(
            (target.backends, target.model, target.version, target.label), None
        )

    async def _fetch_signatures(self, target: Target, ctx: CallContext) -> SignatureSet:
        request = messages.GetModelMetadataRequest()
        apply_target(request.model_spec, target)
        request.metadata_field.append("signature_def")
        response = await self.client.model_metadata(
            target.backends, request, ctx.deadline, ctx.metadata()
        )
        signature_map = messages.SignatureDefMap()
        packed = response.metadata.get("signature_def")
        if packed is not None:
            # The type URL names tensorflow.serving.SignatureDefMap; the bytes are
            # the same as ours, so parse them directly.
            signature_map.ParseFromString(packed.value)
        version = (
            response.model_spec.version.value
            if response.model_spec.HasField("version")
            else target.version
        )
        return SignatureSet(
            model=target.model,
            version=version,
            signatures=dict(signature_map.signature_def),
            pinned=target.version is not None,
        )

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
        apply_target(request.model_spec, plan.primary)
        request.metadata_field.append("signature_def")
        response = await self.client.model_metadata(
            plan.primary.backends, request, ctx.deadline, ctx.metadata()
        )
        if response.model_spec.HasField("version"):
            ctx.version = str(response.model_spec.version.value)
        return response, plan.primary

    async def metadata_request(
        self, ctx: CallContext, request: messages.GetModelMetadataRequest
    ) -> messages.GetModelMetadataResponse:
        """Forward a gRPC GetModelMetadata request to the routed target."""
        version, label = spec_version(request.model_spec)
        plan = self.plan(ctx, request.model_spec.name, version, label)
        forwarded = messages.GetModelMetadataRequest()
        forwarded.CopyFrom(request)
        apply_target(forwarded.model_spec, plan.primary)
        response = await self.client.model_metadata(
            plan.primary.backends, forwarded, ctx.deadline, ctx.metadata()
        )
        if response.model_spec.HasField("version"):
            ctx.version = str(response.model_spec.version.value)
        return response

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

    # ---- inference -------------------------------------------------------------

    async def predict(
        self,
        ctx: CallContext,
        model: str,
        version: int | None,
        label: str | None,
        encode: Callable[[SignatureSet | None], Request],
        needs_signatures: bool = True,
    ) -> tuple[Response, SignatureSet | None]:
        """Route, encode (with the target's signatures), call, mirror if shadowing.

        Args:
            encode: builds the request once the target's signatures are known: a
                PredictRequest, or an ArrayRequest (then the answer is an
                ArrayResponse).
            needs_signatures: False when the request already carries typed tensors.

        Raises:
            GatewayError: from encoding (400), the backend, or the deadline.
        """
        plan = self.plan(ctx, model, version, label)
        return await self.predict_planned(ctx, plan, encode, needs_signatures)

    async def predict_planned(
        self,
        ctx: CallContext,
        plan: Plan,
        encode: Callable[[SignatureSet | None], Request],
        needs_signatures: bool = True,
    ) -> tuple[Response, SignatureSet | None]:
        """`predict` for a plan the caller already made (and may have adjusted)."""
        target = plan.primary
        try:
            response, signatures, request = await self._predict_on(
                ctx, target, encode, needs_signatures
            )
        except BackendError as exc:
            if target.role != CANARY_ROLE or not _is_missing_label(exc):
                raise
            # The canary label vanished (promoted or removed) before we noticed.
            target = self._stable_fallback(target)
            ctx.route = target.role
            response, signatures, request = await self._predict_on(
                ctx, target, encode, needs_signatures
            )
        if response.model_spec.HasField("version"):
            ctx.version = str(response.model_spec.version.value)
        if plan.shadow is not None:
            self._mirror(ctx, plan.shadow, request, response)
        return response, signatures

    def forwards_rest(self, plan: Plan) -> bool:
        """Whether a v1 `:predict` of `plan` goes to the backends' REST API.

        It does when every backend of the target has a known REST address and
        nothing is mirrored (shadow mode compares decoded outputs). The body then
        needs no translation: alone it goes as it came, and concurrent ones are
        merged as JSON (`clients.restbatch`), which also costs the backend less
        per request than its gRPC path.
        """
        rest = self.pool.rest_addresses
        return (
            bool(rest)
            and plan.shadow is None
            and all(address in rest for address in plan.primary.backends)
        )

    async def forward_rest(
        self, ctx: CallContext, plan: Plan, verb: str, body: bytes
    ) -> HttpAnswer:
        """Forward a v1 REST body to the planned target's REST API, untranslated;
        a `:predict` merges with concurrent ones when it can.

        The backend's answer, errors included, is TF Serving's own, so it goes back
        as it is. A canary label that vanished falls back to stable, as on gRPC.

        Raises:
            BackendUnavailable, DeadlineExceeded: the backend did not answer.
        """
        target = plan.primary
        answer = await self._forward_rest_to(ctx, target, verb, body)
        if (
            target.role == CANARY_ROLE
            and answer.status in (400, 404)
            and b"label" in answer.body.lower()
        ):
            target = self._stable_fallback(target)
            ctx.route = target.role
            answer = await self._forward_rest_to(ctx, target, verb, body)
        # TF Serving's REST answers do not name the version that served them; the
        # servekit model server's carry it in a header.
        version = answer.headers.get(b"x-model-version")
        if version is not None:
            ctx.version = version.decode("latin-1")
        elif target.version is not None:
            ctx.version = str(target.version)
        return answer

    async def _forward_rest_to(
        self, ctx: CallContext, target: Target, verb: str, body: bytes
    ) -> HttpAnswer:
        path = rest_path(target, verb)
        mergeable = (
            rest_predict(path, body)
            if verb == "predict" and self.coalescer.merges
            else None
        )
        if mergeable is not None:
            return await self.coalescer.predict(
                target.backends, mergeable, ctx.deadline, ctx.metadata()
            )
        return await self.client.forward_rest(
            target.backends, path, body, ctx.deadline, ctx.metadata()
        )

    async def _predict_on(
        self,
        ctx: CallContext,
        target: Target,
        encode: Callable[[SignatureSet | None], Request],
        needs_signatures: bool,
    ) -> tuple[Response, SignatureSet | None, Request]:
        signatures = await self.signatures(target, ctx) if needs_signatures else None
        request = encode(signatures)
        apply_target(request.model_spec, target)
        try:
            response = await self.coalescer.predict(
                target.backends, request, ctx.deadline, ctx.metadata()
            )
        except BackendError as exc:
            if (
                signatures is None
                or signatures.pinned
                or exc.code.name != "INVALID_ARGUMENT"
            ):
                raise
            # A new version with other dtypes may have replaced the cached one.
            self.forget_signatures(target)
            fresh = await self.signatures(target, ctx)
            if fresh.version == signatures.version:
                raise
            signatures = fresh
            request = encode(signatures)
            apply_target(request.model_spec, target)
            response = await self.coalescer.predict(
                target.backends, request, ctx.deadline, ctx.metadata()
            )
        if (
            signatures is not None
            and not signatures.pinned
            and response.model_spec.HasField("version")
            and response.model_spec.version.value != signatures.version
        ):
            self.forget_signatures(target)
        return response, signatures, request

    async def classify(
        self,
        ctx: CallContext,
        model: str,
        version: int | None,
        label: str | None,
        request: messages.ClassificationRequest,
    ) -> messages.ClassificationResponse:
        plan = self.plan(ctx, model, version, label)
        apply_target(request.model_spec, plan.primary)
        response = await self.client.classify(
            plan.primary.backends, request, ctx.deadline, ctx.metadata()
        )
        if response.model_spec.HasField("version"):
            ctx.version = str(response.model_spec.version.value)
        return response

    async def regress(
        self,
        ctx: CallContext,
        model: str,
        version: int | None,
        label: str | None,
        request: messages.RegressionRequest,
    ) -> messages.RegressionResponse:
        plan = self.plan(ctx, model, version, label)
        apply_target(request.model_spec, plan.primary)
        response = await self.client.regress(
            plan.primary.backends, request, ctx.deadline, ctx.metadata()
        )
        if response.model_spec.HasField("version"):
            ctx.version = str(response.model_spec.version.value)
        return response

    async def multi_inference(
        self, ctx: CallContext, request: messages.MultiInferenceRequest
    ) -> messages.MultiInferenceResponse:
        """MultiInference: every task names the same model (as TF Serving requires).

        Raises:
            InvalidInput: no tasks, or tasks for different models.
        """
        names = {task.model_spec.name for task in request.tasks}
        if len(names) != 1:
            raise InvalidInput("MultiInference tasks must all name the same model")
        first = request.tasks[0].model_spec
        version, label = spec_version(first)
        plan = self.plan(ctx, first.name, version, label)
        for task in request.tasks:
            apply_target(task.model_spec, plan.primary)
        response = await self.client.multi_inference(
            plan.primary.backends, request, ctx.deadline, ctx.metadata()
        )
        return response

    # ---- shadow traffic --------------------------------------------------------

    def _mirror(
        self,
        ctx: CallContext,
        target: Target,
        request: Request,
        answered: Response,
    ) -> None:
        if len(self._shadow_tasks) >= self._max_shadow_tasks:
            self.metrics.shadow_requests.labels(target.model, "dropped").inc()
            return
        mirrored: Request
        if isinstance(request, ArrayRequest):
            mirrored = request.copy()
        else:
            mirrored = messages.PredictRequest()
            mirrored.CopyFrom(request)
        apply_target(mirrored.model_spec, target)
        task = asyncio.create_task(
            self._shadow(target, mirrored, answered, ctx.request_id)
        )
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow(
        self,
        target: Target,
        request: Request,
        answered: Response,
        request_id: str,
    ) -> None:
        deadline = time.monotonic() + self.settings.default_timeout_ms / 1000.0
        try:
            response = await self.coalescer.predict(
                target.backends,
                request,
                deadline,
                ((REQUEST_ID_METADATA, request_id),),
            )
        except GatewayError as exc:
            logger.info("shadow call to %s failed: %s", target.model, exc.message)
            self.metrics.shadow_requests.labels(target.model, "error").inc()
            return
        outcome = "agree" if outputs_agree(answered, response) else "disagree"
        self.metrics.shadow_requests.labels(target.model, outcome).inc()

    # ---- readiness and lifecycle -------------------------------------------------

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Backends reachable and every routed model has an AVAILABLE version."""
        deadline = time.monotonic() + 2.0
        ctx = CallContext(request_id="readyz", protocol="internal", deadline=deadline)
        checks: dict[str, Any] = {}
        ready = True
        routed = dict(self.router.routes.routes)
        for model in routed:
            try:
                status = await self.status(ctx, model, None, None)
            except GatewayError as exc:
                checks[model] = f"error: {exc.message}"
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
        backends = {
            self.router.default_backend,
            *self.settings.framework_backends.values(),
        }
        routed_backends = {
            address for model in routed for address in self.router.backends_of(model)
        }
        for address in sorted(backends - routed_backends):
            channel = self.pool.get(address).channel
            try:
                await asyncio.wait_for(channel.channel_ready(), timeout=1.0)
                checks[address] = "reachable"
            except TimeoutError:
                checks[address] = "unreachable"
                ready = False
        return ready, checks

    async def close(self) -> None:
        for task in list(self._shadow_tasks):
            task.cancel()
        await asyncio.gather(*self._shadow_tasks, return_exceptions=True)
        await self.pool.close()
        self.access_log.flush()


def rest_path(target: Target, verb: str) -> str:
    """TF Serving's REST path of a target, e.g. `/v1/models/m/labels/canary:predict`."""
    path = "/v1/models/" + quote(target.model, safe="")
    if target.version is not None:
        path += f"/versions/{target.version}"
    elif target.label is not None:
        path += "/labels/" + quote(target.label, safe="")
    return f"{path}:{verb}"


def spec_version(spec: messages.ModelSpec) -> tuple[int | None, str | None]:
    """(version, label) a client's ModelSpec asks for."""
    if spec.HasField("version"):
        return spec.version.value, None
    if spec.version_label:
        return None, spec.version_label
    return None, None


def unknown_model(model: str) -> ModelNotFound:
    return ModelNotFound(f"Servable not found for request: Latest({model})")
