"""Bytes and arrays handed between processes through shared memory segments.

A large request message goes to a worker process, and its decoded arrays come
back, through POSIX shared memory (files of a tmpfs folder, ``/dev/shm``
unless a server is told another) rather than a pipe: sending 256 MiB through a process pool's pipe pickles it first, a copy
made holding the GIL (tens of milliseconds on a loaded machine) on top of the
copies into and out of the pipe. Here the server's side only calls ``write``
and ``readv`` on the segment, in a thread: the kernel copies the bytes with the
GIL released, so the event loop keeps running meanwhile. The worker maps the
message and writes each array with one ``write``.

Segments are files created by path (``O_EXCL``, mode 0600) by whichever side
writes them; the server's side makes both paths, in the folder it was given
(the worker gets them whole, so it needs no setting of its own), and unlinks both once the worker
has answered, on every path (errors and cancelled calls included); what a
server killed meanwhile leaves, the next one to start removes
(:func:`sweep_leftovers`). These are
not :class:`multiprocessing.shared_memory.SharedMemory` segments on purpose:
on Python 3.11 every process that attaches one registers it with
multiprocessing's resource tracker, which then warns about it, or unlinks it,
at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import re
import secrets
import tempfile
from collections.abc import Awaitable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

_CHUNK_BYTES = 16 * 1024 * 1024
"""Bytes a single ``write`` or ``readv`` moves, so that one system call's
copy stays short."""

Array = np.ndarray[Any, Any]


def default_directory() -> str:
    """Where segments live unless a server is told otherwise: tmpfs on Linux
    (``/dev/shm``), the temporary folder elsewhere."""
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def check_directory(directory: str) -> str:
    """``directory`` itself once it is known to be a folder where this process
    can create segments (a server checks it as it starts, rather than warning
    on every large call).

    Raises:
        ValueError: It does not exist, is not a folder, or no file can be
            created in it.
    """
    if not os.path.exists(directory):
        raise ValueError(f"shared memory directory {directory!r} does not exist")
    if not os.path.isdir(directory):
        raise ValueError(f"shared memory directory {directory!r} is not a directory")
    # A file really created, not os.access: a read-only mount passes that.
    probe = new_path(directory, "probe")
    try:
        os.close(_create(probe))
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(
            f"shared memory directory {directory!r} is not writable: {exc.strerror}"
        ) from exc
    return directory


def new_path(directory: str, role: str) -> str:
    """A fresh segment's path in ``directory``: its name holds the process id,
    for finding the leftovers of a process that crashed, and 64 random bits."""
    name = f"servekit-{os.getpid()}-{secrets.token_hex(8)}-{role}"
    return os.path.join(directory, name)


_NAME = re.compile(r"servekit-([0-9]{1,10})-[0-9a-f]{16}-[a-z]+")
"""The names :func:`new_path` makes: the only names :func:`sweep_leftovers` touches."""


@dataclass(frozen=True, slots=True)
class Swept:
    """What :func:`sweep_leftovers` removed."""

    segments: int
    bytes: int


def sweep_leftovers(directory: str) -> Swept:
    """Remove the segments that crashed processes left in ``directory``: those
    named by :func:`new_path` for a process id that is not running, or for this
    process's own id (a server calls this as it starts, before it has made any:
    a restarted container's server often gets its predecessor's id). Segments
    of a running process, files of another user and every other name are left
    alone. Blocking (unlinking frees the pages): run it in a thread.
    """
    removed = freed = 0
    own_uid, own_pid = os.getuid(), os.getpid()
    with os.scandir(directory) as entries:
        for entry in entries:
            match = _NAME.fullmatch(entry.name)
            if match is None or not entry.is_file(follow_symlinks=False):
                continue
            pid = int(match.group(1))
            try:
                status = entry.stat(follow_symlinks=False)
                if status.st_uid != own_uid or (pid != own_pid and _is_running(pid)):
                    continue
                os.unlink(entry.path)
            except OSError:
                continue  # gone meanwhile, or not ours to remove
            removed += 1
            freed += status.st_size
    return Swept(removed, freed)


async def sweep_at_start(logger: logging.Logger, directory: str) -> Swept:
    """:func:`sweep_leftovers` of ``directory`` in a thread, as a server
    starts, with one log line on ``logger`` when it removed anything."""
    swept = await asyncio.to_thread(sweep_leftovers, directory)
    if swept.segments:
        logger.info(
            "Removed shared memory segments left by stopped servers",
            extra={
                "segments": swept.segments,
                "bytes_freed": swept.bytes,
                "directory": directory,
            },
        )
    return swept


def _is_running(pid: int) -> bool:
    if pid <= 0:
        return True  # not a process's id: kill() would mean a group; keep it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except OverflowError:
        return True  # beyond any pid: not ours to judge
    return True


def unlink(path: str) -> None:
    """Remove a segment if it exists (its pages go once nothing maps them)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


_T = TypeVar("_T")


async def run_to_end(work: Awaitable[_T]) -> _T:
    """``work`` awaited shielded: a call cancelled meanwhile (its client went
    away) still lets it run to its end, so the segments it made are removed;
    its error is then nobody's to raise and is consumed."""
    task = asyncio.ensure_future(work)
    task.add_done_callback(_consume_error)
    return await asyncio.shield(task)


def _consume_error(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        with contextlib.suppress(Exception):
            task.exception()


def unlink_soon(*paths: str) -> None:
    """:func:`unlink` each of ``paths`` in the running loop's default executor,
    not awaited: unlinking frees a segment's pages there and then, about 50 ms
    for 256 MiB with the calling thread blocked (the GIL is released, but the
    loop would be the caller)."""
    loop = asyncio.get_running_loop()
    for path in paths:
        loop.run_in_executor(None, unlink, path)


def _create(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        written = os.write(fd, view[:_CHUNK_BYTES])
        view = view[written:]


def write_bytes(path: str, data: bytes | bytearray | memoryview) -> None:
    """Create segment ``path`` holding ``data`` (blocking: run it in a thread).

    Raises:
        OSError: The segment exists already or cannot be written (no space).
    """
    fd = _create(path)
    try:
        _write_all(fd, memoryview(data).cast("B"))
    finally:
        os.close(fd)


@contextlib.contextmanager
def mapped(path: str) -> Iterator[memoryview]:
    """Segment ``path`` mapped read-only, for as long as the block runs.

    Raises:
        OSError: No such segment.
    """
    with open(path, "rb") as segment:
        size = os.fstat(segment.fileno()).st_size
        if size == 0:
            # mmap refuses an empty mapping.
            yield memoryview(b"")
            return
        mapping = mmap.mmap(segment.fileno(), size, access=mmap.ACCESS_READ)
    view = memoryview(mapping)
    try:
        yield view
    finally:
        view.release()
        mapping.close()


@dataclass(frozen=True, slots=True)
class ArraySlot:
    """Where one array lies in a segment: its bytes from ``offset``."""

    key: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    offset: int


def _bytes_of(array: Array) -> memoryview:
    # A byte view of any dtype (memoryview cannot cast every format numpy
    # exports, complex ones among them).
    return array.reshape(-1).view(np.uint8).data


def write_arrays(path: str, arrays: Mapping[str, Array]) -> list[ArraySlot]:
    """Create segment ``path`` holding ``arrays`` one after the other, in C
    order; their slots, in the order of ``arrays``.

    Raises:
        OSError: The segment exists already or cannot be written (no space).
    """
    slots: list[ArraySlot] = []
    offset = 0
    fd = _create(path)
    try:
        for key, array in arrays.items():
            contiguous = np.ascontiguousarray(array)
            slots.append(ArraySlot(key, array.dtype, array.shape, offset))
            if contiguous.nbytes:
                _write_all(fd, _bytes_of(contiguous))
            offset += contiguous.nbytes
    finally:
        os.close(fd)
    return slots


def read_arrays(path: str, slots: list[ArraySlot]) -> dict[str, Array]:
    """New arrays (writable, C order, owning their memory) read from segment
    ``path`` (blocking: run it in a thread; the reads hold no GIL).

    Raises:
        OSError: The segment is missing or shorter than ``slots`` say.
    """
    arrays: dict[str, Array] = {}
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for slot in slots:
            array: Array = np.empty(slot.shape, slot.dtype)
            view = _bytes_of(array)
            position = slot.offset
            while view:
                count = os.preadv(fd, [view[:_CHUNK_BYTES]], position)
                if count == 0:
                    raise OSError(f"segment {path} ended early")
                view = view[count:]
                position += count
            arrays[slot.key] = array
    finally:
        os.close(fd)
    return arrays
