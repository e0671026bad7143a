"""A watched process exits once its parent dies, and not before.

Each test runs a parent process that starts a child arming the watch (from a
thread of the parent that then ends, the case ``PR_SET_PDEATHSIG`` reports as
a death of the parent), checks the child outlives that thread, SIGKILLs the
parent and waits for the child to end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from servekit_protocol.json_codec import parent_watch

SLACK_SECONDS = 3.0
"""Room for a loaded 2-core machine to run the child once it is told (the
signal arrives at once, the poll within a second)."""

CHILD = """
import os, sys, time
from servekit_protocol.json_codec import parent_watch
parent = os.getppid()
if sys.argv[1] == "kernel":
    assert parent_watch.ask_kernel(parent)
else:
    parent_watch.start_polling(parent)
print("armed", flush=True)
time.sleep(120)
"""

PARENT = """
import subprocess, sys, threading, time
children = []
def start():
    children.append(subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]]))
thread = threading.Thread(target=start)
thread.start()
thread.join()
print(children[0].pid, flush=True)
time.sleep(120)
"""


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has ended: its reaper may be slow)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize(
    ("mode", "bound"),
    [("kernel", SLACK_SECONDS), ("poll", parent_watch.POLL_SECONDS + SLACK_SECONDS)],
)
def test_the_child_exits_once_its_parent_is_killed(mode: str, bound: float) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD, mode],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert parent.stdout.readline() == "armed\n"
        # The thread that started it has ended; the parent has not.
        time.sleep(0.5 + parent_watch.POLL_SECONDS)
        assert _running(child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + bound
        while _running(child):
            assert time.monotonic() < deadline, f"the child still runs {bound} s on"
            time.sleep(0.02)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=10)
