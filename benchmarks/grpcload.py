"""gRPC load: a closed-loop load generator and a trivial server to measure it against.

No compiled gRPC load generator installs from the registries reachable here (``ghz``
is neither on PyPI, npm nor Debian), so this one is Python. It keeps its own work
small: the request is serialized once and sent as raw bytes, and answers are not
parsed (the harness checks one real answer per system before loading it). Still, one
Python process on one core may be the bottleneck, so it reports its own CPU time,
and ``serve`` runs a server that answers every call with a fixed empty
``PredictResponse``: the rate against it is the client's ceiling.

Run as ``python -m benchmarks.grpcload load ...`` (prints one JSON line) or
``python -m benchmarks.grpcload serve --port-file F``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.results import LoadSummary
from benchmarks.stats import summarize_nanoseconds
from benchmarks.targets import GrpcTarget

PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
V2_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class GrpcLoadError(Exception):
    """The load generator failed or printed no result."""


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def drive(
    target: str,
    method: str,
    request: bytes,
    *,
    clients: int,
    warmup_s: float,
    duration_s: float,
    timeout_s: float,
) -> dict[str, Any]:
    """Run ``clients`` callers in a loop; measure the window after the warm-up.

    A call counts when it starts after the warm-up and ends before the stop time.
    """
    import grpc

    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=timeout_s)
        # No serializers: the request goes out as the bytes given, the answer stays bytes.
        call = channel.unary_unary(method)
        begin = time.perf_counter_ns()
        measure_from = begin + int(warmup_s * 1e9)
        stop = measure_from + int(duration_s * 1e9)
        latencies: list[int] = []
        errors: Counter[str] = Counter()
        cpu: dict[str, float] = {}

        async def caller() -> None:
            while True:
                started = time.perf_counter_ns()
                if started >= stop:
                    return
                failed: str | None = None
                try:
                    await call(request, timeout=timeout_s)
                except grpc.aio.AioRpcError as error:
                    failed = error.code().name
                ended = time.perf_counter_ns()
                if started >= measure_from and ended <= stop:
                    if failed is None:
                        latencies.append(ended - started)
                    else:
                        errors[failed] += 1

        async def cpu_sampler() -> None:
            await asyncio.sleep(max(0.0, (measure_from - time.perf_counter_ns()) / 1e9))
            cpu["start"] = _cpu_seconds()
            await asyncio.sleep(max(0.0, (stop - time.perf_counter_ns()) / 1e9))
            cpu["stop"] = _cpu_seconds()

        await asyncio.gather(cpu_sampler(), *(caller() for _ in range(clients)))
    result: dict[str, Any] = {
        "requests": len(latencies) + sum(errors.values()),
        "errors": dict(errors),
        "duration_s": duration_s,
        "client_cpu": (cpu["stop"] - cpu["start"]) / duration_s,
    }
    if latencies:
        summary = summarize_nanoseconds(latencies)
        result.update(
            p50_ms=summary.p50_ms,
            p90_ms=summary.p90_ms,
            p99_ms=summary.p99_ms,
            mean_ms=summary.mean_ms,
            max_ms=summary.max_ms,
        )
    return result


def load_command(
    target: GrpcTarget,
    *,
    clients: int,
    warmup_s: float,
    duration_s: float,
    cpu: int | None,
    python: str = sys.executable,
) -> list[str]:
    """The argv of one load run in its own process, pinned to ``cpu`` if given."""
    command = [
        python,
        "-m",
        "benchmarks.grpcload",
        "load",
        f"--target={target.address}",
        f"--method={target.path}",
        f"--request-file={target.request_file}",
        f"--clients={clients}",
        f"--warmup={warmup_s}",
        f"--duration={duration_s}",
    ]
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    return command


def parse_result(output: str) -> LoadSummary:
    """Read the JSON line ``load`` printed.

    Raises:
        GrpcLoadError: No JSON result in the output.
    """
    lines = [line for line in output.splitlines() if line.startswith("{")]
    if not lines:
        raise GrpcLoadError(
            f"no result from the gRPC load generator:\n{output[-2000:]}"
        )
    data = json.loads(lines[-1])
    errors = {str(kind): int(count) for kind, count in data["errors"].items()}
    if "p50_ms" not in data:
        raise GrpcLoadError(f"every gRPC call failed: {errors}")
    return LoadSummary(
        requests=int(data["requests"]),
        errors=sum(errors.values()),
        duration_s=float(data["duration_s"]),
        p50_ms=float(data["p50_ms"]),
        p90_ms=float(data["p90_ms"]),
        p99_ms=float(data["p99_ms"]),
        mean_ms=float(data["mean_ms"]),
        max_ms=float(data["max_ms"]),
        client_cpu=float(data["client_cpu"]),
        error_kinds=errors,
    )


def run_load(command: list[str], seconds: float) -> LoadSummary:
    """Run the load generator process and return its summary.

    Raises:
        GrpcLoadError: It exited non-zero, hung, or every call failed.
    """
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise GrpcLoadError(f"gRPC load did not finish: {' '.join(command)}") from exc
    if completed.returncode != 0:
        raise GrpcLoadError(
            f"gRPC load exited {completed.returncode}: {completed.stderr[-2000:]}"
        )
    return parse_result(completed.stdout)


async def serve_trivial(port_file: Path) -> None:
    """Answer every Predict with an empty response until killed."""
    import grpc

    async def answer(request: bytes, context: Any) -> bytes:  # noqa: ARG001
        return b""

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "tensorflow.serving.PredictionService",
        {"Predict": grpc.unary_unary_rpc_method_handler(answer)},
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    temporary = port_file.with_suffix(".tmp")
    temporary.write_text(str(port), encoding="utf-8")
    temporary.replace(port_file)
    await server.wait_for_termination()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.grpcload")
    commands = parser.add_subparsers(dest="command", required=True)
    load = commands.add_parser("load", help="closed-loop load; prints one JSON line")
    load.add_argument("--target", required=True, help="host:port")
    load.add_argument("--method", default=PREDICT_METHOD)
    load.add_argument("--request-file", type=Path, required=True)
    load.add_argument("--clients", type=int, default=1)
    load.add_argument("--warmup", type=float, default=1.0)
    load.add_argument("--duration", type=float, default=5.0)
    load.add_argument("--timeout", type=float, default=10.0)
    serve = commands.add_parser("serve", help="trivial Predict server on 127.0.0.1")
    serve.add_argument("--port-file", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "serve":
        asyncio.run(serve_trivial(args.port_file))
        return 0
    result = asyncio.run(
        drive(
            args.target,
            args.method,
            args.request_file.read_bytes(),
            clients=args.clients,
            warmup_s=args.warmup,
            duration_s=args.duration,
            timeout_s=args.timeout,
        )
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
