"""Forwarding: the one way a Predict reaches a backend.

`Forwarder.predict` decides how a planned Predict goes out: a TF Serving REST body
goes to the backend's REST API untranslated when every backend of the target has
one and nothing is mirrored; anything else is encoded with the target's
signatures and goes over gRPC. Both ways go through the coalescer. When a canary
target's label has vanished (promoted or removed before the routes were
reloaded), the backend's refusal says so in TF Serving's own terms
(INVALID_ARGUMENT, "Unrecognized servable version label"), and the call is made
once more on the stable target; this is decided in one place, for both ways.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from servekit_protocol.grpc_codes import from_grpc
from servekit_protocol.serving import is_unknown_label
from servekit_protocol.status import Code

from gateway.clients.backend import BackendClient
from gateway.clients.coalescer import Coalescer, Request, Response
from gateway.clients.forwarded import ForwardedPredict
from gateway.clients.http import HttpAnswer, error_text
from gateway.clients.pool import BackendPool
from gateway.clients.restbatch import rest_predict
from gateway.context import CallContext, apply_target, rest_path
from gateway.errors import BackendError
from gateway.routing.router import CANARY_ROLE, Plan, Router, Target
from gateway.shadow import Shadow
from gateway.signatures import SignatureCache, SignatureSet


@dataclass(slots=True)
class PredictCall:
    """What an adapter asks to predict, in the forms it can be sent."""

    encode: Callable[[SignatureSet | None], Request | Awaitable[Request]]
    """Builds the backend request once the target's signatures are known: a
    PredictRequest (answered with a PredictResponse) or an ArrayRequest (answered
    with an ArrayResponse); a coroutine when it parses a body off the loop."""
    needs_signatures: bool = True
    """False when the request already carries typed tensors."""
    rest_body: bytes | None = None
    """A TF Serving v1 `:predict` JSON body that may go to a REST backend as is."""


@dataclass(slots=True)
class Predicted:
    """A Predict's answer: translated (`response`) or forwarded (`answer`)."""

    response: Response | None = None
    signatures: SignatureSet | None = None
    answer: HttpAnswer | None = None
    """The backend's REST answer, any status, to be returned as it is."""

    @property
    def translated(self) -> Response:
        """The answer of a call that had no REST body to forward."""
        assert self.response is not None, "a forwarded answer has no response"
        return self.response


@dataclass(slots=True)
class _Attempt:
    """One target's outcome: an answer, or the backend's refusal."""

    predicted: Predicted
    request: Request | None = None
    error: BackendError | None = None

    @property
    def unknown_label(self) -> bool:
        if self.error is not None:
            code = from_grpc(self.error.grpc_code)
            return is_unknown_label(code, self.error.message)
        answer = self.predicted.answer
        # TF Serving's REST server answers INVALID_ARGUMENT with 400.
        return (
            answer is not None
            and answer.status == 400
            and is_unknown_label(Code.INVALID_ARGUMENT, error_text(answer.body))
        )


class Forwarder:
    """Sends planned Predicts to their targets.

    Args:
        pool: the backends, with their REST addresses when they have one.
        client: makes single (unmerged) backend calls.
        coalescer: merges concurrent Predicts of one target.
        signatures: the targets' signatures, for typing JSON requests.
        router: names the stable target when a canary label has vanished.
        shadow: mirrors Predicts of plans that have a shadow target.
    """

    def __init__(
        self,
        pool: BackendPool,
        client: BackendClient,
        coalescer: Coalescer,
        signatures: SignatureCache,
        router: Router,
        shadow: Shadow,
    ) -> None:
        self._pool = pool
        self._client = client
        self._coalescer = coalescer
        self._signatures = signatures
        self._router = router
        self._shadow = shadow

    def forwards_rest(self, plan: Plan) -> bool:
        """Whether a v1 `:predict` of `plan` goes to the backends' REST API.

        It does when every backend of the target has a known REST address and
        nothing is mirrored (shadow mode compares decoded outputs). The body then
        needs no translation: alone it goes as it came, and concurrent ones are
        merged as JSON (`clients.restbatch`), which also costs the backend less
        per request than its gRPC path.
        """
        rest = self._pool.rest_addresses
        return (
            bool(rest)
            and plan.shadow is None
            and all(address in rest for address in plan.primary.backends)
        )

    async def predict(
        self, ctx: CallContext, plan: Plan, call: PredictCall
    ) -> Predicted:
        """Send `call` to the plan's target (forwarded or translated), fall back
        from a vanished canary label to stable, mirror to the shadow target.

        Raises:
            GatewayError: from encoding (400), the backend, or the deadline.
            ProtocolError: an answer that cannot be decoded into arrays.
        """
        forward = call.rest_body is not None and self.forwards_rest(plan)
        # A mirrored answer kept as its bytes is compared off the loop (`shadow`).
        keep_from = ctx.keep_answer_from
        target = plan.primary
        attempt = await self._attempt(ctx, target, call, forward, keep_from)
        if target.role == CANARY_ROLE and attempt.unknown_label:
            target = self._router.stable_target(target.model)
            ctx.route = target.role
            attempt = await self._attempt(ctx, target, call, forward, keep_from)
        if attempt.error is not None:
            raise attempt.error
        predicted = attempt.predicted
        if predicted.response is not None:
            spec = predicted.response.model_spec
            if spec.HasField("version"):
                ctx.version = str(spec.version.value)
        elif predicted.answer is not None:
            # TF Serving's REST answers do not name the version that served them;
            # the servekit model server's carry it in a header.
            version = predicted.answer.headers.get(b"x-model-version")
            if version is not None:
                ctx.version = version.decode("latin-1")
            elif target.version is not None:
                ctx.version = str(target.version)
        if (
            plan.shadow is not None
            and attempt.request is not None
            and predicted.response is not None
        ):
            self._shadow.mirror(ctx, plan.shadow, attempt.request, predicted.response)
        return predicted

    async def _attempt(
        self,
        ctx: CallContext,
        target: Target,
        call: PredictCall,
        forward: bool,
        keep_from: int | None,
    ) -> _Attempt:
        if forward:
            assert call.rest_body is not None
            answer = await self._forward_rest(ctx, target, call.rest_body)
            return _Attempt(Predicted(answer=answer))
        try:
            response, signatures, request = await self._translated(
                ctx, target, call, keep_from
            )
        except BackendError as exc:
            return _Attempt(Predicted(), error=exc)
        return _Attempt(Predicted(response, signatures), request)

    async def _forward_rest(
        self, ctx: CallContext, target: Target, body: bytes
    ) -> HttpAnswer:
        """The backend's REST answer to a v1 `:predict` body, untranslated; it
        merges with concurrent ones when it can. Errors included, the answer is
        TF Serving's own, so it goes back as it is."""
        path = rest_path(target, "predict")
        mergeable = rest_predict(path, body) if self._coalescer.merges else None
        if mergeable is not None:
            return await self._coalescer.predict(
                target.backends, mergeable, ctx.deadline, ctx.metadata()
            )
        return await self._client.forward_rest(
            target.backends, path, body, ctx.deadline, ctx.metadata()
        )

    async def _translated(
        self,
        ctx: CallContext,
        target: Target,
        call: PredictCall,
        keep_from: int | None,
    ) -> tuple[Response, SignatureSet | None, Request]:
        cache = self._signatures
        signatures = await cache.get(target, ctx) if call.needs_signatures else None
        request = await _encoded(call, signatures)
        apply_target(request.model_spec, target)
        if isinstance(request, ForwardedPredict):
            request.keep_answer_from = keep_from
        try:
            # A large answer comes back as its bytes, whatever the request's
            # size; a large merged one is cut into bytes off the loop.
            response = await self._coalescer.predict(
                target.backends, request, ctx.deadline, ctx.metadata(), keep_from
            )
        except BackendError as exc:
            if (
                signatures is None
                or signatures.pinned
                or exc.grpc_code is not grpc.StatusCode.INVALID_ARGUMENT
            ):
                raise
            # A new version with other dtypes may have replaced the cached one.
            cache.forget(target)
            fresh = await cache.get(target, ctx)
            if fresh.version == signatures.version:
                raise
            signatures = fresh
            request = await _encoded(call, signatures)
            apply_target(request.model_spec, target)
            if isinstance(request, ForwardedPredict):
                request.keep_answer_from = keep_from
            response = await self._coalescer.predict(
                target.backends, request, ctx.deadline, ctx.metadata(), keep_from
            )
        if (
            signatures is not None
            and not signatures.pinned
            and response.model_spec.HasField("version")
            and response.model_spec.version.value != signatures.version
        ):
            cache.forget(target)
        return response, signatures, request


async def _encoded(call: PredictCall, signatures: SignatureSet | None) -> Request:
    request = call.encode(signatures)
    if inspect.isawaitable(request):
        return await request
    return request
