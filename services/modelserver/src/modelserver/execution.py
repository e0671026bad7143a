"""Where a prepared model call runs: the batch queue, a pool thread or the loop.

The dataplane hands every inference call here once the runtime has prepared it.
A batched call joins its version's batch queue; an unbatched one runs on the
inference pool, or on the event loop when :mod:`modelserver.inline` has proven
its signature short. The deadline is applied the same way to all three.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from modelserver.batching.batcher import Batcher
from modelserver.errors import DeadlineExceeded
from modelserver.inline import InlinePolicy
from modelserver.threadpool import ThreadPool

if TYPE_CHECKING:
    from modelserver.observability.metrics import Metrics
    from modelserver.registry.registry import Servable
    from modelserver.runtimes.base import PreparedCall, Runtime
    from modelserver.settings import Settings
    from modelserver.types import Tensor

Outputs = dict[str, "Tensor"]


class Executor:
    """Runs prepared calls: batched, on the inference pool, or inline.

    Args:
        settings: The server's settings (``inference_threads``,
            ``inline_inference_micros``, ``enable_batching`` and ``batching``).
        metrics: Where the batch queues record their sizes and waits.
    """

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._inference = ThreadPool(settings.inference_threads, "inference")
        self._inline = InlinePolicy(settings.inline_inference_micros / 1e6)
        self._batcher = (
            Batcher(settings.batching, metrics) if settings.enable_batching else None
        )

    async def run(
        self,
        servable: Servable,
        runtime: Runtime,
        call: PreparedCall,
        timeout: float | None,
    ) -> Outputs:
        """Run ``call`` on ``runtime`` and return its outputs.

        Raises:
            Overloaded: The batch queue is full.
            DeadlineExceeded: ``timeout`` elapsed.
        """
        pending: Awaitable[Outputs]
        if self._batcher is not None and call.batch_size:
            loop = asyncio.get_running_loop()  # a getpid() on 3.11: not per call
            deadline = None if timeout is None else loop.time() + timeout
            pending = self._batcher.submit(
                servable.name, servable.version_text, runtime, call, servable, deadline
            )
        else:
            run = self._inline.timed_run(runtime, call)
            if self._inline.inline(runtime, call, timeout):
                return run(call)  # proven short: cheaper than two thread hops
            pending = self._inference.run(run, call)
        if timeout is None:
            return await pending
        try:
            async with asyncio.timeout(timeout):
                return await pending
        except TimeoutError as exc:
            raise DeadlineExceeded("Deadline Exceeded") from exc

    async def close_version(self, servable: Servable) -> None:
        """Close an unloaded version's batch queue (its waiting calls fail)."""
        if self._batcher is not None:
            await self._batcher.close_version(servable.name, servable.version_text)

    async def close(self) -> None:
        """Close the batch queues, then join the inference threads."""
        if self._batcher is not None:
            await self._batcher.close()
        # Joining the pool off the loop: a model call may still be finishing.
        await self._inference.close()
