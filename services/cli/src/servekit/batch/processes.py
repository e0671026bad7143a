"""Worker processes for one in-process job: blocks of output shards written in parallel.

One process runs the model on one core at a time: its model thread shares the GIL
with the threads that read, convert and encode. :class:`ShardProcesses` starts
``count`` worker processes; each loads the version with the model server's
loader, as the parent did (sha256 checks, ``code/``, the compiled model), and
then writes the blocks
of output shards the job sends it with the job's own :func:`write_shards`: the
same reading, chunks, model calls and writer as a one-process job, so a shard's
files are the same bytes whichever process writes them. The workers send the
rows they write back (a few times a second), so the parent shows one progress
bar, and their failures, so the job fails with the same message.

Each worker holds what a one-process job holds (its read-ahead, the chunks
queued for its model, the row groups being written) plus its own loaded copy of
the version.

On Linux the workers are forked: they start with the modules the parent has
imported (seconds of imports each when spawned, on a machine the job keeps
busy) and load the version in tens of milliseconds. They are forked before the
job starts any thread (reader, model, writer, progress bar), and each loads its
own copy rather than share the parent's model objects across the fork. A
parent that has loaded TensorFlow spawns them instead: TensorFlow's thread pools
are not fork-safe (a forked child hangs in its first session), so each worker
imports it anew, which takes seconds. Elsewhere they are spawned too.

A worker leaves when the parent ends (it is sent SIGTERM, and on
Linux the kernel tells it when the parent dies), dropping the shard it was
writing; a later run writes that shard again.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import ForkContext, SpawnContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from servekit.batch.job import JobSettings, ShardPlan, write_shards
from servekit.batch.sources import InputFile
from servekit.console import CommandError

POLL_SECONDS = 0.2
"""How often the parent, waiting for its workers' news, checks that they live."""
REPORT_SECONDS = 0.1
"""How often at most a worker sends the rows it wrote since its last report."""
STOP_SECONDS = 10.0
"""How long the parent waits for a worker to leave before it kills it."""


@dataclass(frozen=True)
class _Worker:
    process: BaseProcess
    tasks: Connection


class ShardProcesses:
    """``count`` worker processes, each with the version loaded (a context
    manager: entering starts them and waits until every one has loaded it)."""

    def __init__(
        self,
        registry: Path,
        name: str,
        version: int,
        signature: str,
        count: int,
        *,
        session_threads: int = 0,
    ) -> None:
        self._arguments = (registry, name, version, signature, session_threads)
        self._count = count
        self._context: ForkContext | SpawnContext = (
            multiprocessing.get_context("fork")
            if sys.platform.startswith("linux") and "tensorflow" not in sys.modules
            else multiprocessing.get_context("spawn")
        )
        self._events: Any = self._context.Queue()
        self._workers: list[_Worker] = []

    @property
    def count(self) -> int:
        """How many workers."""
        return self._count

    @property
    def session_threads(self) -> int:
        """A TensorFlow version's thread pools in each worker (0: TensorFlow's
        default)."""
        return int(self._arguments[-1])

    def __enter__(self) -> ShardProcesses:
        try:
            for number in range(self._count):
                reader, writer = self._context.Pipe(duplex=False)
                process = self._context.Process(
                    target=_work,
                    args=(number, *self._arguments, os.getpid(), reader, self._events),
                    name=f"batch-worker-{number}",
                    daemon=True,
                )
                process.start()
                reader.close()
                self._workers.append(_Worker(process, writer))
            self._gather("ready", set(range(self._count)), None)
        except BaseException:
            self._stop(at_once=True)
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop(at_once=error is not None)

    def write(
        self,
        files: list[InputFile],
        settings: JobSettings,
        plan: ShardPlan,
        blocks: list[list[int]],
        advance: Callable[[int], None],
    ) -> None:
        """Write block ``k`` of output shards in worker ``k``, all at once.

        Raises:
            CommandError: A worker failed or ended (the others finish their
                blocks first, so that a re-run has the fewest shards left).
        """
        if len(blocks) > self._count:
            raise ValueError(f"{len(blocks)} blocks for {self._count} workers")
        for worker, block in zip(self._workers, blocks, strict=False):
            worker.tasks.send((files, settings, plan, block))
        self._gather("done", set(range(len(blocks))), advance)

    def _gather(
        self, wanted: str, waiting: set[int], advance: Callable[[int], None] | None
    ) -> None:
        """Read the workers' news until each in ``waiting`` said ``wanted`` or
        failed.

        Raises:
            CommandError: One of them failed, or ended.
        """
        failures: list[str] = []
        while waiting:
            try:
                kind, number, detail = self._events.get(timeout=POLL_SECONDS)
            except queue.Empty:
                for number in sorted(waiting):
                    process = self._workers[number].process
                    if not process.is_alive():
                        waiting.discard(number)
                        failures.append(
                            f"batch worker {number} ended (exit code "
                            f"{process.exitcode})"
                        )
                continue
            if kind == "rows":
                if advance is not None:
                    advance(detail)
            elif kind == wanted:
                waiting.discard(number)
            elif kind == "failed":
                waiting.discard(number)
                failures.append(detail)
        if failures:
            raise CommandError("; ".join(failures))

    def _stop(self, *, at_once: bool) -> None:
        """End the workers: idle ones when told, and, ``at_once`` (the job
        failed or was interrupted), busy ones too, dropping their shards."""
        for worker in self._workers:
            with contextlib.suppress(OSError):  # it has ended already
                worker.tasks.send(None)
            worker.tasks.close()
            if at_once and worker.process.is_alive():
                # SIGTERM: the worker drops the shard it writes and leaves.
                worker.process.terminate()
        deadline = time.monotonic() + STOP_SECONDS
        for worker in self._workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join(STOP_SECONDS)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
        self._workers = []
        self._events.close()
        self._events.join_thread()


class _Rows:
    """The rows a worker wrote, sent to the parent a few times a second."""

    def __init__(self, events: Any, number: int) -> None:
        self._events = events
        self._number = number
        self._rows = 0
        self._sent = time.monotonic()

    def add(self, rows: int) -> None:
        self._rows += rows
        if time.monotonic() - self._sent >= REPORT_SECONDS:
            self.send()

    def send(self) -> None:
        if self._rows:
            self._events.put(("rows", self._number, self._rows))
        self._rows = 0
        self._sent = time.monotonic()


def _leave(_signal: int, _frame: FrameType | None) -> None:
    # SystemExit unwinds the job, so the shard being written is dropped.
    sys.exit(128 + signal.SIGTERM)


def _work(
    number: int,
    registry: Path,
    name: str,
    version: int,
    signature: str,
    session_threads: int,
    parent: int,
    tasks: Connection,
    events: Any,
) -> None:
    """A worker process: load the version, then write the blocks it is sent."""
    from servekit_protocol.json_codec.parent_watch import watch_parent

    from servekit.batch.inprocess import InProcessPredictor

    watch_parent(parent)
    signal.signal(signal.SIGTERM, _leave)
    # Ctrl-C reaches the whole process group: the parent decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        predictor = InProcessPredictor(
            registry, name, version, signature, session_threads=session_threads
        )
    except Exception as exc:
        events.put(("failed", number, _reason(exc)))
        return
    try:
        events.put(("ready", number, None))
        while True:
            task = tasks.recv()
            if task is None:
                return
            files, settings, plan, block = task
            rows = _Rows(events, number)
            try:
                write_shards(files, predictor, settings, plan, block, rows.add)
            except Exception as exc:
                rows.send()
                events.put(("failed", number, _reason(exc)))
                continue
            rows.send()
            events.put(("done", number, None))
    except EOFError:
        return  # the parent closed its end
    finally:
        predictor.close()


def _reason(error: Exception) -> str:
    """What the one-process job would have said."""
    if isinstance(error, CommandError):
        return str(error)
    return f"{type(error).__name__}: {error}"
