"""The JSON workers of a killed server exit on their own, on both services.

A server killed with SIGKILL (the OOM killer, ``kubectl delete --force``) cannot
stop its workers, and a worker blocked on the pool's pipe never reads EOF there
(it holds the pipe's write end too): without a watch on its parent it would
stay forever. The test starts the real servers, makes the workers of each parse a body
(offload thresholds of one byte), SIGKILLs each server in turn (the gateway
first) and waits for every one of its children (the workers and
multiprocessing's resource tracker) to end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.security.figures import record
from tests.security.stack import serving_stack
from tests.support.processes import ServerProcess, spawned_workers

pytestmark = pytest.mark.integration

EXIT_SECONDS = 5.0
"""How long the children may take to end once the server is dead. The kernel
signals a worker at once and it leaves in milliseconds; the rest is room for
a loaded 2-core machine to schedule it. A worker without the watch never ends."""

BODY = b'{"instances": [{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 4.0}]}'


def _children(pid: int) -> dict[int, str]:
    """Every child of ``pid`` with its start time (field 22 of
    ``/proc/<pid>/stat``), so that a reused pid is not taken for it."""
    children: dict[int, str] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            for child in (task / "children").read_text().split():
                with contextlib.suppress(FileNotFoundError):
                    children[int(child)] = _stat(int(child))[19]
    return children


def _stat(pid: int) -> list[str]:
    """``/proc/<pid>/stat`` from the state on (the name may hold spaces)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def _alive(pid: int, started: str) -> bool:
    """Whether the process still runs: a zombie has ended (the reaper of the
    orphan may be slow to collect it)."""
    try:
        fields = _stat(pid)
    except (FileNotFoundError, ProcessLookupError):
        return False
    return fields[19] == started and fields[0] != "Z"


def _kill_and_time_children(process: ServerProcess) -> float:
    children = _children(process.pid)
    workers = spawned_workers(process.pid)
    assert workers, process.log_tail(40)
    assert workers <= set(children)
    os.kill(process.pid, signal.SIGKILL)
    process.popen.wait(timeout=10)
    killed = time.monotonic()
    deadline = killed + EXIT_SECONDS
    while True:
        alive = {pid for pid, started in children.items() if _alive(pid, started)}
        if not alive:
            return time.monotonic() - killed
        assert time.monotonic() < deadline, (
            f"children {sorted(alive)} of the killed server still run "
            f"{EXIT_SECONDS} s later"
        )
        time.sleep(0.02)


def _predict(url: str, headers: dict[str, str]) -> None:
    answer = httpx.post(
        f"{url}/v1/models/linear:predict", content=BODY, headers=headers, timeout=30
    )
    assert answer.status_code == 200, answer.text


def test_the_workers_of_each_killed_server_exit(tmp_path: Path) -> None:
    with serving_stack(
        tmp_path,
        model_server_flags=["--rest_api_json_offload_bytes=1"],
        gateway_flags=["--json-offload-bytes=1"],
    ) as stack:
        _predict(
            f"http://127.0.0.1:{stack.gateway.http_port}",
            {"x-api-key": stack.keys.admin},
        )
        _predict(f"http://127.0.0.1:{stack.model_server.rest_port}", {})
        for process in (stack.gateway.process, stack.model_server.process):
            seconds = _kill_and_time_children(process)
            record("seconds until the children ended", seconds)
