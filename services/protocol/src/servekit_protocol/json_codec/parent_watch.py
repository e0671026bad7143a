"""A JSON worker's watch on its server: the worker exits when the server dies.

A pool worker waits on the pool's call queue, a pipe whose write end it holds
too, so it never reads EOF there: when its server is killed without a chance to
stop it (SIGKILL from the OOM killer or ``kubectl delete --force``), the worker
would wait forever, holding its memory.

On Linux the kernel tells the worker: ``prctl(PR_SET_PDEATHSIG)`` asks for
:data:`DEATH_SIGNAL` when its parent goes. The kernel sends it when the *thread*
that spawned the worker ends, not only the process: on CPython 3.11 a ``spawn``
pool launches each worker from the thread that calls ``submit`` (the servers do
from their event loop, in the main thread, but nothing in the pool promises
that). So the signal is caught rather than left to kill: the handler exits
only when the parent process has changed (the server died and the worker was
handed to another one); when only the spawning thread ended, the worker belongs
to another thread of the same server, and the kernel sends the signal again
when that one ends. SIGTERM is not used: the pool itself stops its workers with
it (``terminate``), and that must keep stopping them whoever the parent is.

Elsewhere (or when ``prctl`` cannot be called), a daemon thread compares
``os.getppid()`` with the server's pid every :data:`POLL_SECONDS`: a wake-up
a second costs no measurable CPU.

Either way the worker leaves with ``os._exit`` (nothing of its state is worth
saving, and its server is gone). A segment of shared memory it was writing is
named after the server's pid (:func:`servekit_protocol.segments.new_path`), so
the next server to start removes it
(:func:`servekit_protocol.segments.sweep_leftovers`).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from types import FrameType

DEATH_SIGNAL = signal.SIGUSR1
"""What the kernel sends a Linux worker when its parent thread ends."""
POLL_SECONDS = 1.0
"""How often the portable watch checks the parent's pid."""
EXIT_CODE = 70
"""The worker's exit status when it leaves because its server died."""

_PR_SET_PDEATHSIG = 1
"""From ``<linux/prctl.h>``."""


def watch_parent(parent_pid: int) -> None:
    """Make this process exit once ``parent_pid`` is no longer its parent:
    within a moment on Linux (a signal), within :data:`POLL_SECONDS` elsewhere,
    and in both cases as soon as Python code runs again when the process is
    busy in a long C call (parsing a large body)."""
    if sys.platform.startswith("linux") and ask_kernel(parent_pid):
        return
    start_polling(parent_pid)


def ask_kernel(parent_pid: int) -> bool:
    """Linux: exit on :data:`DEATH_SIGNAL` once ``parent_pid`` is no longer
    the parent. Returns False, changing nothing, when ``prctl`` cannot be
    called."""

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        _exit_if_orphaned(parent_pid)

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    signal.signal(DEATH_SIGNAL, on_signal)
    if libc.prctl(_PR_SET_PDEATHSIG, int(DEATH_SIGNAL), 0, 0, 0) != 0:
        signal.signal(DEATH_SIGNAL, signal.SIG_DFL)
        return False
    # The parent may have died before the signal was armed: nothing would
    # tell the worker then.
    _exit_if_orphaned(parent_pid)
    return True


def _exit_if_orphaned(parent_pid: int) -> None:
    if os.getppid() != parent_pid:
        os._exit(EXIT_CODE)


def start_polling(parent_pid: int) -> None:
    """Exit within :data:`POLL_SECONDS` once ``parent_pid`` is no longer the
    parent, checked by a daemon thread."""
    threading.Thread(
        target=_poll, args=(parent_pid,), name="parent-watch", daemon=True
    ).start()


def _poll(parent_pid: int) -> None:
    while True:
        _exit_if_orphaned(parent_pid)
        time.sleep(POLL_SECONDS)
