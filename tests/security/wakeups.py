"""How late a sleeping thread wakes on this machine while a call runs: the
baseline a server's event loop lag is compared with.

A server's ``..._event_loop_lag_seconds`` adds two waits: for the GIL, held by
another thread of the server (what the lag assertions are after: a busy-CPU
bound cannot see it), and for a core, which on a loaded 2-core runner can be
tens of milliseconds whatever the server does. The probe is a small separate
process (its own GIL, nothing else to do) that sleeps 1 ms at a time and keeps
its latest wake-up: the second wait as the machine gave it at the same moment.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable, Iterator

_PROBE = """
import select, sys, time
print("ticking", flush=True)
worst = 0.0
while True:
    start = time.monotonic()
    # Sleeps 1 ms, or wakes for good when the test closes stdin.
    if select.select([sys.stdin], [], [], 0.001)[0]:
        break
    worst = max(worst, time.monotonic() - start - 0.001)
print(worst, flush=True)
"""


@contextlib.contextmanager
def latest_wakeup() -> Iterator[Callable[[], float]]:
    """While the block runs, a probe sleeps 1 ms at a time; after it, the
    function yielded gives the latest the probe woke, in seconds."""
    probe = subprocess.Popen(
        [sys.executable, "-c", _PROBE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert probe.stdout is not None
    found: list[float] = []
    try:
        assert probe.stdout.readline().strip() == "ticking"
        yield lambda: found[0]
    finally:
        output, _ = probe.communicate("", timeout=60)
        found.append(float(output))
