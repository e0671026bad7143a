"""Shadow traffic: a copy of a routed Predict goes to the shadow target, its answer
is compared with the one the client got, and only the comparison is kept (as a
metric). The client never waits for the shadow call.

A large answer (the client's, or the shadow's: it is only compared) is received
as its bytes (`clients.answers`), and the two are parsed and compared in a
worker thread: on the event loop a 30 MiB answer and its shadow's held it
about 150 ms at a stretch.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
from google.protobuf.message import DecodeError
from servekit_protocol import messages
from servekit_protocol.errors import ProtocolError
from servekit_protocol.logs import REQUEST_ID_HEADER

from gateway.clients.answers import ReceivedAnswer
from gateway.clients.arrays import ArrayRequest, output_arrays
from gateway.clients.coalescer import Coalescer, Request, Response
from gateway.clients.forwarded import ForwardedPredict
from gateway.context import CallContext, apply_target
from gateway.errors import GatewayError, InvalidInput
from gateway.observability.metrics import GatewayMetrics
from gateway.routing.router import Target

logger = logging.getLogger(__name__)

SHADOW_RTOL = 1e-5
SHADOW_ATOL = 1e-6
"""A shadow and its primary may run on other hardware or batch sizes, so their
float sums differ in the last bits; differences above these are real."""


def outputs_agree(first: Response, second: Response) -> bool:
    """Whether two predictions match (numbers within a small tolerance); an
    answer kept as bytes that does not parse matches nothing."""
    try:
        lefts = output_arrays(first)
        rights = output_arrays(second)
    except (ProtocolError, DecodeError):
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


class Shadow:
    """Mirrors Predicts to shadow targets, at most `max_tasks` at once (beyond
    that a mirror is dropped and counted, never queued).

    Args:
        coalescer: makes the shadow calls (they merge like any other).
        metrics: `shadow_requests` counts agree/disagree/error/dropped.
        timeout_ms: each shadow call's deadline.
        max_tasks: shadow calls in flight at once.
        keep_from: the size from which a shadow call's answer is received as
            its bytes and compared off the event loop (None: parsed on it).
    """

    def __init__(
        self,
        coalescer: Coalescer,
        metrics: GatewayMetrics,
        *,
        timeout_ms: float,
        max_tasks: int,
        keep_from: int | None = None,
    ) -> None:
        self._coalescer = coalescer
        self._metrics = metrics
        self._timeout_ms = timeout_ms
        self._max_tasks = max(1, max_tasks)
        self._keep_from = keep_from
        self._tasks: set[asyncio.Task[None]] = set()

    def mirror(
        self,
        ctx: CallContext,
        target: Target,
        request: Request,
        answered: Response,
    ) -> None:
        """Send a copy of `request` to `target` and compare with `answered`."""
        if len(self._tasks) >= self._max_tasks:
            self._metrics.shadow_requests.labels(
                self._metrics.model_label(target.model), "dropped"
            ).inc()
            return
        mirrored: Request
        if isinstance(request, ForwardedPredict):
            mirrored = request.copy()
            mirrored.keep_answer_from = self._keep_from
        elif isinstance(request, ArrayRequest):
            mirrored = request.copy()
        else:
            mirrored = messages.PredictRequest()
            mirrored.CopyFrom(request)
        apply_target(mirrored.model_spec, target)
        task = asyncio.create_task(
            self._compare(target, mirrored, answered, ctx.request_id)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _compare(
        self,
        target: Target,
        request: Request,
        answered: Response,
        request_id: str,
    ) -> None:
        deadline = time.monotonic() + self._timeout_ms / 1000.0
        try:
            if isinstance(request, ArrayRequest) and self._keep_from is not None:
                # Sent as a proto (as the array strategy sends it), so that its
                # answer can be kept as bytes rather than decoded on the loop.
                request = _encoded(request)
            response = await self._coalescer.predict(
                target.backends,
                request,
                deadline,
                ((REQUEST_ID_HEADER, request_id),),
                None if isinstance(request, ArrayRequest) else self._keep_from,
            )
        except GatewayError as exc:
            logger.info("shadow call to %s failed: %s", target.model, exc.message)
            self._metrics.shadow_requests.labels(
                self._metrics.model_label(target.model), "error"
            ).inc()
            return
        if isinstance(answered, ReceivedAnswer) or isinstance(response, ReceivedAnswer):
            agree = await asyncio.to_thread(outputs_agree, answered, response)
        else:
            agree = outputs_agree(answered, response)
        outcome = "agree" if agree else "disagree"
        self._metrics.shadow_requests.labels(
            self._metrics.model_label(target.model), outcome
        ).inc()

    async def close(self) -> None:
        """Cancel the shadow calls in flight."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _encoded(request: ArrayRequest) -> messages.PredictRequest:
    """The request as the array strategy would send it.

    Raises:
        InvalidInput: an array cannot be encoded.
    """
    try:
        return request.to_proto()
    except ProtocolError as exc:
        raise InvalidInput(exc.message) from exc
