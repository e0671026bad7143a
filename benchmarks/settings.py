"""What a benchmark run is asked to do: command-line options, in one place.

Built once in ``__main__`` and passed down; this is also the only module that reads
the process environment (to hand it on to the servers it starts).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = REPO_ROOT / ".venv" / "bin"

MODELS = ("tabular", "digits")
PROTOCOLS = ("rest", "grpc")
SYSTEMS = (
    "servekit",
    "servekit-batching",
    "mlserver",
    "mlserver-batching",
    "fastapi",
    "gateway",
    "gateway-unmerged",
    "gateway-v2",
    "gateway-grpcio",
    "gateway-h2",
    "relay",
    "inprocess",
    "grpc-ceiling",
    "servekit-grpc-before",
    "servekit-grpc-aio",
    "servekit-pickle",
    "servekit-pickle-batching",
    "servekit-approximate",
    "servekit-approximate-batching",
    "encoding",
)
GRPC_CLIENTS = ("h2load", "python")

QUICK_CLIENTS = (1, 32)
FULL_CLIENTS = (1, 8, 32)
QUICK = {
    "rounds": 1,
    "duration": 2,
    "warmup": 1,
    "inprocess_seconds": 1.5,
    "turns_seconds": 6.0,
}
FULL = {
    "rounds": 3,
    "duration": 6,
    "warmup": 2,
    "inprocess_seconds": 4.0,
    "turns_seconds": 30.0,
}


@dataclass(frozen=True)
class BatchingOptions:
    """TF Serving batching parameters for servekit, MLServer's adaptive batching."""

    max_batch_size: int = 32
    batch_timeout_micros: int = 0
    """No wait for a fuller batch: with one batch thread on the server's one core,
    batches form from the requests that arrive while the previous batch runs, and a
    lone request (1 client) runs at once instead of waiting out a timeout."""
    num_batch_threads: int = 1
    """One core, one batch at a time: two concurrent batches only halve each other."""
    max_enqueued_batches: int = 64
    mlserver_max_batch_size: int = 32
    mlserver_max_batch_time: float = 0.005

    def parameters_text(self) -> str:
        """The ``--batching_parameters_file`` text proto."""
        return (
            f"max_batch_size {{ value: {self.max_batch_size} }}\n"
            f"batch_timeout_micros {{ value: {self.batch_timeout_micros} }}\n"
            f"num_batch_threads {{ value: {self.num_batch_threads} }}\n"
            f"max_enqueued_batches {{ value: {self.max_enqueued_batches} }}\n"
        )


@dataclass(frozen=True)
class BenchOptions:
    """Everything one ``python -m benchmarks`` run does."""

    models: tuple[str, ...] = MODELS
    protocols: tuple[str, ...] = PROTOCOLS
    systems: tuple[str, ...] = SYSTEMS
    clients: tuple[int, ...] = (1, 8, 32)
    rounds: int = 3
    duration: int = 6
    """Seconds measured per run."""
    warmup: int = 2
    """Seconds of load before each measured run, not counted."""
    inprocess_seconds: float = 4.0
    turns_seconds: float = 30.0
    """Seconds each model and protocol spends in the 1-client turns after the
    rounds (``benchmarks.interleaved``)."""
    registry: Path = REPO_ROOT / ".bench" / "registry"
    work_dir: Path = REPO_ROOT / ".bench"
    output_dir: Path = REPO_ROOT / "bench-results"
    load_cpu: int | None = 0
    server_cpu: int | None = 1
    grpc_client: str = "h2load"
    gateway_backend: str = "servekit-batching"
    mlserver_workers: int = 1
    install: bool = True
    """Install missing prerequisites (wrk, h2load, MLServer's venv, the models)."""
    quick: bool = False
    batching: BatchingOptions = field(default_factory=BatchingOptions)

    def wants(self, system: str) -> bool:
        return system in self.systems

    def runs_per_round(self) -> int:
        """Load runs in one round (an estimate for the progress lines)."""
        count = 0
        for model in self.models:
            for protocol in self.protocols:
                for system in self.systems:
                    if system in ("inprocess", "grpc-ceiling", "encoding"):
                        continue
                    if system.startswith(
                        ("mlserver", "servekit-pickle", "servekit-approximate")
                    ) and (model != "tabular"):
                        continue
                    if system == "fastapi" and protocol != "rest":
                        continue
                    if system.startswith("servekit-grpc-") and protocol != "grpc":
                        continue
                    count += 1
        if "grpc-ceiling" in self.systems and "grpc" in self.protocols:
            count += 1
        return count * len(self.clients)


def _csv(
    kind: type[int] | type[str], allowed: Sequence[str] | None = None
) -> Callable[[str], tuple[object, ...]]:
    def parse(text: str) -> tuple[object, ...]:
        values = tuple(kind(item.strip()) for item in text.split(",") if item.strip())
        if not values:
            raise argparse.ArgumentTypeError("empty list")
        if allowed is not None:
            unknown = [value for value in values if value not in allowed]
            if unknown:
                raise argparse.ArgumentTypeError(
                    f"unknown {unknown}; choose from {', '.join(allowed)}"
                )
        return values

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Side-by-side serving benchmarks on 127.0.0.1 (make bench).",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 round of 2 s runs at 1 and 32 clients (a few minutes)",
    )
    parser.add_argument("--rounds", type=int, help="rounds (default 3; quick 1)")
    parser.add_argument("--duration", type=int, help="seconds per run (default 6)")
    parser.add_argument("--warmup", type=int, help="warm-up seconds per run (2)")
    parser.add_argument(
        "--clients", type=_csv(int), help="concurrent clients (1,8,32; quick 1,32)"
    )
    parser.add_argument(
        "--turns-seconds",
        type=float,
        help="seconds of 1-client turns per model and protocol (30; quick 6)",
    )
    parser.add_argument(
        "--models", type=_csv(str, MODELS), default=MODELS, help="tabular,digits"
    )
    parser.add_argument(
        "--protocols", type=_csv(str, PROTOCOLS), default=PROTOCOLS, help="rest,grpc"
    )
    parser.add_argument(
        "--systems",
        type=_csv(str, SYSTEMS),
        default=SYSTEMS,
        help=f"subset of {','.join(SYSTEMS)}",
    )
    parser.add_argument("--registry", type=Path, default=BenchOptions.registry)
    parser.add_argument("--work-dir", type=Path, default=BenchOptions.work_dir)
    parser.add_argument("--output-dir", type=Path, default=BenchOptions.output_dir)
    parser.add_argument("--load-cpu", type=int, default=0)
    parser.add_argument("--server-cpu", type=int, default=1)
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin processes with taskset"
    )
    parser.add_argument("--grpc-client", choices=GRPC_CLIENTS, default="h2load")
    parser.add_argument(
        "--gateway-backend",
        choices=("servekit", "servekit-batching"),
        default="servekit-batching",
        help="the model server the gateway forwards to",
    )
    parser.add_argument("--mlserver-workers", type=int, default=1)
    parser.add_argument(
        "--no-install",
        action="store_true",
        help="fail instead of installing missing wrk/h2load/MLServer/models",
    )
    defaults = BatchingOptions()
    parser.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size)
    parser.add_argument(
        "--batch-timeout-micros", type=int, default=defaults.batch_timeout_micros
    )
    parser.add_argument(
        "--num-batch-threads", type=int, default=defaults.num_batch_threads
    )
    parser.add_argument(
        "--max-enqueued-batches", type=int, default=defaults.max_enqueued_batches
    )
    parser.add_argument(
        "--mlserver-max-batch-size",
        type=int,
        default=defaults.mlserver_max_batch_size,
    )
    parser.add_argument(
        "--mlserver-max-batch-time",
        type=float,
        default=defaults.mlserver_max_batch_time,
    )
    return parser


def parse_options(argv: Sequence[str] | None = None) -> BenchOptions:
    """Parse the command line into options, applying the quick or full preset."""
    args = build_parser().parse_args(argv)
    preset = QUICK if args.quick else FULL
    pin = not args.no_pin
    return BenchOptions(
        models=tuple(args.models),
        protocols=tuple(args.protocols),
        systems=tuple(args.systems),
        clients=tuple(args.clients)
        if args.clients
        else (QUICK_CLIENTS if args.quick else FULL_CLIENTS),
        rounds=args.rounds if args.rounds is not None else int(preset["rounds"]),
        duration=args.duration
        if args.duration is not None
        else int(preset["duration"]),
        warmup=args.warmup if args.warmup is not None else int(preset["warmup"]),
        inprocess_seconds=float(preset["inprocess_seconds"]),
        turns_seconds=args.turns_seconds
        if args.turns_seconds is not None
        else float(preset["turns_seconds"]),
        registry=args.registry.resolve(),
        work_dir=args.work_dir.resolve(),
        output_dir=args.output_dir.resolve(),
        load_cpu=args.load_cpu if pin else None,
        server_cpu=args.server_cpu if pin else None,
        grpc_client=args.grpc_client,
        gateway_backend=args.gateway_backend,
        mlserver_workers=args.mlserver_workers,
        install=not args.no_install,
        quick=args.quick,
        batching=BatchingOptions(
            max_batch_size=args.max_batch_size,
            batch_timeout_micros=args.batch_timeout_micros,
            num_batch_threads=args.num_batch_threads,
            max_enqueued_batches=args.max_enqueued_batches,
            mlserver_max_batch_size=args.mlserver_max_batch_size,
            mlserver_max_batch_time=args.mlserver_max_batch_time,
        ),
    )


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus ``extra``, for a server subprocess."""
    environment = dict(os.environ)
    if extra:
        environment.update(extra)
    return environment
