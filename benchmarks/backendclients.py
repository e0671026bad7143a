"""How long a large answer from a backend's gRPC port holds the gateway's event
loop, read by each of the gateway's two clients: grpc.aio (``pool.Backend``'s
channel) and the gateway's HTTP/2 client (:mod:`gateway.clients.h2grpc`).

A servekit model server serves ``line`` (one value out per row); a Predict of
a few bytes declaring ``rows`` rows is answered with ``rows`` float64 values.
Both clients run on this process's event loop, as in the gateway, with a
ticker on it (1 ms apart, :mod:`benchmarks.ticker`) recording the longest gap
between its ticks during each call: the stall other calls would see (the
loop's wall clock, so GIL waits count). The clients run in turns, each answer
checked equal to the other's; medians and maxima are reported with their ratio.

Run as ``python -m benchmarks.backendclients [--rounds 5] [--sizes 16,64]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
from gateway.clients.h2grpc import H2Channel
from gateway.clients.pool import CHANNEL_OPTIONS
from servekit_protocol import grpcweb, messages

from benchmarks.ticker import TICK_SECONDS

PREDICT = "/tensorflow.serving.PredictionService/Predict"


@contextlib.asynccontextmanager
async def loop_stretches() -> AsyncIterator[list[tuple[float, float]]]:
    """While the block runs, a ticker on the loop records each interval
    between its ticks as (wall seconds, CPU seconds of the loop's thread): the
    wall gap is what other calls wait (GIL waits and the scheduler included),
    the CPU what the loop itself did, as the gateway's
    ``gateway_event_loop_busy_seconds`` measures it."""
    stretches: list[tuple[float, float]] = []
    done = asyncio.Event()

    async def tick() -> None:
        wall, cpu = time.perf_counter(), time.thread_time()
        while not done.is_set():
            await asyncio.sleep(TICK_SECONDS)
            now, now_cpu = time.perf_counter(), time.thread_time()
            stretches.append((now - wall, now_cpu - cpu))
            wall, cpu = now, now_cpu

    ticker = asyncio.create_task(tick())
    try:
        yield stretches
    finally:
        done.set()
        await ticker


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1e3:.1f} (max {max(values) * 1e3:.1f})"


def _request(rows: int) -> bytes:
    request = messages.PredictRequest()
    request.model_spec.name = "line"
    tensor = request.inputs["x"]
    tensor.dtype = messages.DT_DOUBLE
    tensor.tensor_shape.dim.add(size=rows)
    tensor.tensor_shape.dim.add(size=1)
    tensor.double_val.append(0.5)
    return request.SerializeToString()


async def _run(target: str, rounds: int, sizes: list[int]) -> None:
    channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
    call = channel.unary_unary(PREDICT)
    h2 = H2Channel(target, 1 << 30)
    try:
        for mib in [1, *sizes]:
            data = _request(mib * 131_072)
            walls: dict[str, list[float]] = {"grpc.aio": [], "h2": []}
            cpus: dict[str, list[float]] = {"grpc.aio": [], "h2": []}
            for _ in range(rounds if mib in sizes else 1):
                async with loop_stretches() as aio_stretches:
                    via_aio = await call(data, timeout=120)
                async with loop_stretches() as h2_stretches:
                    via_h2 = await h2.unary(
                        PREDICT, (grpcweb.prefix(len(data)), data), 120, ()
                    )
                assert via_aio == via_h2
                for name, seen in (("grpc.aio", aio_stretches), ("h2", h2_stretches)):
                    walls[name].append(max(wall for wall, _ in seen))
                    cpus[name].append(max(cpu for _, cpu in seen))
            if mib not in sizes:
                continue  # the first call of each starts what it needs
            for what, found in (("wall gap", walls), ("loop CPU stretch", cpus)):
                aio, ours = found["grpc.aio"], found["h2"]
                print(
                    f"{mib} MiB answer, longest {what} ms: grpc.aio {_ms(aio)}, "
                    f"h2 {_ms(ours)}, grpc.aio/h2 "
                    f"{statistics.median(aio) / statistics.median(ours):.1f}x",
                    flush=True,
                )
    finally:
        await h2.close()
        await channel.close()


def main() -> None:
    """Parse the arguments, start the model server and run the rounds."""
    from sklearn.linear_model import LinearRegression

    from tests.support.models import publish_regression
    from tests.support.modelserver import model_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", default="16,64", help="MiB of doubles")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        registry = Path(folder) / "models"
        features = np.arange(8.0).reshape(-1, 1)
        model = LinearRegression().fit(features, 3.0 * features[:, 0] + 0.25)
        publish_regression(registry, "line", model, 1, {})
        with model_server(
            [f"--model_config_file={registry / 'servekit.config'}"],
            log_path=Path(folder) / "model-server.log",
        ) as server:
            sizes = [int(size) for size in args.sizes.split(",")]
            asyncio.run(_run(server.grpc_target, args.rounds, sizes))


if __name__ == "__main__":
    main()
