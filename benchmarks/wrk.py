"""HTTP load with Debian's ``wrk``: the Lua script, the command line, the summary.

wrk is a compiled, closed-loop load generator: ``-c`` connections each send one
request and wait for its answer before sending the next, so ``-c`` is the number of
concurrent clients. The Lua script reads the POST body from a file given after
``--`` and, in ``done()``, prints one ``WRK-SUMMARY {json}`` line with the request
count, errors and latency percentiles recorded by wrk for every request.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

from benchmarks.results import LoadSummary, children_cpu_seconds
from benchmarks.targets import HttpTarget

SUMMARY_PREFIX = "WRK-SUMMARY "

LUA_SCRIPT = """\
-- servekit benchmarks: POST a body read from a file, print a JSON summary.
-- Arguments after "--": <body file> [content type] ["Name: value" ...]

init = function(args)
  local file = assert(io.open(args[1], "rb"))
  wrk.body = file:read("*a")
  file:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = args[2] or "application/json"
  for i = 3, #args do
    local name, value = args[i]:match("^([^:]+):%s*(.*)$")
    wrk.headers[name] = value
  end
end

done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"min_us":%.1f,"max_us":%.1f,"mean_us":%.3f,' ..
    '"p50_us":%.1f,"p90_us":%.1f,"p99_us":%.1f}\\n',
    "__PREFIX__",
    summary.requests, summary.duration, summary.bytes,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency.min, latency.max, latency.mean,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
""".replace("__PREFIX__", SUMMARY_PREFIX)

ERROR_KINDS = ("connect", "read", "write", "status", "timeout")


class WrkError(Exception):
    """wrk failed or printed no summary."""


def write_script(directory: Path) -> Path:
    """Write the Lua script into ``directory`` and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "post.lua"
    path.write_text(LUA_SCRIPT, encoding="utf-8")
    return path


def wrk_command(
    target: HttpTarget,
    *,
    script: Path,
    clients: int,
    seconds: int,
    timeout_seconds: int = 10,
    cpu: int | None = None,
    wrk: str = "wrk",
) -> list[str]:
    """The argv of one wrk run, pinned to ``cpu`` with taskset when given."""
    command = [
        wrk,
        "-t1",
        f"-c{clients}",
        f"-d{seconds}s",
        f"--timeout={timeout_seconds}s",
        "-s",
        str(script),
        target.url,
        "--",
        str(target.body_file),
        target.content_type,
        *(f"{name}: {value}" for name, value in target.headers),
    ]
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    return command


def parse_summary(output: str) -> LoadSummary:
    """Read the ``WRK-SUMMARY`` line that the Lua ``done()`` printed.

    Raises:
        WrkError: No summary line, or one that is not the expected JSON.
    """
    for line in output.splitlines():
        if line.startswith(SUMMARY_PREFIX):
            try:
                data = json.loads(line[len(SUMMARY_PREFIX) :])
                error_kinds = {kind: int(data[kind]) for kind in ERROR_KINDS}
                if int(data["requests"]) == 0:
                    raise WrkError(
                        f"no request completed in the window (errors: {error_kinds})"
                    )
                return LoadSummary(
                    requests=int(data["requests"]),
                    errors=sum(error_kinds.values()),
                    duration_s=int(data["duration_us"]) / 1e6,
                    p50_ms=float(data["p50_us"]) / 1000,
                    p90_ms=float(data["p90_us"]) / 1000,
                    p99_ms=float(data["p99_us"]) / 1000,
                    mean_ms=float(data["mean_us"]) / 1000,
                    max_ms=float(data["max_us"]) / 1000,
                    error_kinds={k: v for k, v in error_kinds.items() if v},
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise WrkError(f"unreadable wrk summary {line!r}: {exc}") from exc
    raise WrkError(f"wrk printed no summary line; output was:\n{output[-2000:]}")


def run_wrk(command: list[str], seconds: int) -> LoadSummary:
    """Run wrk and return its summary with its CPU time (cores used) added.

    Raises:
        WrkError: wrk exited non-zero, hung, or printed no summary.
    """
    before = children_cpu_seconds()
    try:
        completed = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=seconds + 30,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise WrkError(f"wrk did not finish: {' '.join(command)}") from exc
    cpu_seconds = children_cpu_seconds() - before
    if completed.returncode != 0:
        raise WrkError(
            f"wrk exited {completed.returncode}: {completed.stderr[-2000:]}"
            f"{completed.stdout[-2000:]}"
        )
    summary = parse_summary(completed.stdout)
    return replace(
        summary,
        client_cpu=cpu_seconds / summary.duration_s if summary.duration_s else None,
    )
