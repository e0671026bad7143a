"""gRPC load with nghttp2's ``h2load`` (Debian's ``nghttp2-client``), a compiled client.

gRPC is HTTP/2: a unary call is a POST to ``/<service>/<method>`` with
``content-type: application/grpc`` and ``te: trailers``, whose body is the message
behind a 5-byte prefix (a compression flag and a big-endian length). ``h2load``
sends such a body from a file, ``-c`` clients with one stream each, and writes the
latency of every request to ``--log-file``.

It cannot read the ``grpc-status`` trailer: a failed call is still HTTP 200. A
failed call carries no message, though (gRPC answers errors trailers-only), so the
DATA bytes received tell how many calls succeeded, given the size of one good answer.
"""

from __future__ import annotations

import re
import struct
import subprocess
from dataclasses import replace
from pathlib import Path

from benchmarks.results import LoadSummary, children_cpu_seconds
from benchmarks.stats import percentile
from benchmarks.targets import GrpcTarget

FRAME_PREFIX_BYTES = 5

_REQUESTS = re.compile(
    r"requests: (?P<total>\d+) total, (?P<started>\d+) started, (?P<done>\d+) done, "
    r"(?P<succeeded>\d+) succeeded, (?P<failed>\d+) failed, (?P<errored>\d+) errored, "
    r"(?P<timeout>\d+) timeout"
)
_DATA = re.compile(r"traffic: .*?, [^,]*?\((?P<data>\d+)\) data")


class H2loadError(Exception):
    """h2load failed or its output could not be read."""


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: not compressed, then the 4-byte length."""
    return struct.pack(">BI", 0, len(message)) + message


def write_frame(target: GrpcTarget, directory: Path) -> Path:
    """Write the framed request of ``target`` next to its request file."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{target.request_file.stem}.grpc-frame"
    path.write_bytes(grpc_frame(target.request_file.read_bytes()))
    return path


def h2load_command(
    target: GrpcTarget,
    *,
    frame_file: Path,
    clients: int,
    seconds: int,
    log_file: Path,
    cpu: int | None,
    h2load: str = "h2load",
) -> list[str]:
    """The argv of one h2load run: ``clients`` connections with one stream each."""
    command = [
        h2load,
        f"--clients={clients}",
        "--max-concurrent-streams=1",
        "--threads=1",
        f"--duration={seconds}",
        f"--data={frame_file}",
        "--header=content-type: application/grpc",
        "--header=te: trailers",
        f"--log-file={log_file}",
        f"http://{target.address}{target.path}",
    ]
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    return command


def parse_output(
    output: str, log_text: str, seconds: float, response_bytes: int | None
) -> LoadSummary:
    """Combine h2load's printed totals with the per-request log.

    Raises:
        H2loadError: The totals line is missing, or no request completed.
    """
    counts = _REQUESTS.search(output)
    if counts is None:
        raise H2loadError(f"no request totals in h2load output:\n{output[-2000:]}")
    totals = counts.group(0)
    latencies_us: list[float] = []
    http_failures = 0
    for line in log_text.splitlines():
        columns = line.split("\t")
        if len(columns) < 3:
            continue
        if not columns[1].startswith("2"):
            http_failures += 1
            continue
        latencies_us.append(float(columns[2]))
    done = int(counts["done"])
    if not latencies_us:
        raise H2loadError(f"no request completed in the window ({totals})")
    transport_errors = int(counts["failed"]) + int(counts["errored"])
    transport_errors += int(counts["timeout"])
    call_failures = 0
    data = _DATA.search(output)
    if response_bytes is not None and data is not None:
        answered = round(int(data["data"]) / (response_bytes + FRAME_PREFIX_BYTES))
        call_failures = max(0, len(latencies_us) - answered)
    latencies_us.sort()
    error_kinds = {
        kind: count
        for kind, count in (
            ("transport", transport_errors),
            ("http", http_failures),
            ("grpc_status", call_failures),
        )
        if count
    }
    return LoadSummary(
        requests=max(done, len(latencies_us) + http_failures),
        errors=sum(error_kinds.values()),
        duration_s=seconds,
        p50_ms=percentile(latencies_us, 50) / 1000,
        p90_ms=percentile(latencies_us, 90) / 1000,
        p99_ms=percentile(latencies_us, 99) / 1000,
        mean_ms=sum(latencies_us) / len(latencies_us) / 1000,
        max_ms=latencies_us[-1] / 1000,
        error_kinds=error_kinds,
    )


def run_h2load(
    command: list[str], log_file: Path, seconds: int, response_bytes: int | None
) -> LoadSummary:
    """Run h2load (the log file is emptied first) and return its summary.

    Raises:
        H2loadError: It exited non-zero, hung, or completed no request.
    """
    # h2load appends to its log file.
    log_file.unlink(missing_ok=True)
    before = children_cpu_seconds()
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds + 30, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise H2loadError(f"h2load did not finish: {' '.join(command)}") from exc
    cpu_seconds = children_cpu_seconds() - before
    if completed.returncode != 0:
        raise H2loadError(
            f"h2load exited {completed.returncode}: {completed.stderr[-2000:]}"
        )
    log_text = log_file.read_text(encoding="utf-8") if log_file.exists() else ""
    summary = parse_output(completed.stdout, log_text, seconds, response_bytes)
    return replace(summary, client_cpu=cpu_seconds / seconds)
