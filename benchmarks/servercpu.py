"""Server CPU a 1-client gRPC Predict costs, model servers of two checkouts in turns.

Each checkout's model server (``--checkout NAME=DIR``; an empty DIR is this one)
serves the same model from the bench registry, pinned to one core; ``h2load``
drives one client on another core for ``--seconds``, and the server's CPU time
(all its threads, from ``/proc``) is divided by the calls answered. The servers
take turns, the order reversing every round, so a change in the machine's load
reaches both; medians over rounds are printed, with the read and write system
calls and the context switches a call (``/proc/PID/io``, ``/proc/PID/task``).
The other checkout's code is imported from its ``services/*/src`` folders with
this checkout's virtual environment.

Run as ``python -m benchmarks.servercpu --model tabular --checkout
before=/tmp/old --checkout after=``; the registry and request frames are
``make bench``'s (``.bench/``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.servers import free_port
from benchmarks.settings import REPO_ROOT

_PACKAGES = ("protocol", "modelserver", "modelregistry", "cli")
_DONE = re.compile(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded")
_PATH = "/tensorflow.serving.PredictionService/Predict"


@dataclass
class Server:
    """One checkout's model server and what it used over the measured runs."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    micros: list[float] = field(default_factory=list)
    per_call: list[tuple[float, float, float]] = field(default_factory=list)


def _usage(pid: int) -> tuple[float, int, int, int]:
    """CPU seconds, read and write system calls, context switches of ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    io = dict(
        line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines()
    )
    switches = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith(("voluntary_ctxt", "nonvoluntary_ctxt")):
                switches += int(line.split()[1])
    return cpu, int(io["syscr"]), int(io["syscw"]), switches


def _h2load(port: int, frame: Path, *, seconds: int = 0, calls: int = 0) -> int:
    command = ["taskset", "-c", "0", "h2load", "--clients=1", "--threads=1"]
    command += [f"--data={frame}", "--header=content-type: application/grpc"]
    command += [f"--duration={seconds}" if seconds else f"-n{calls}"]
    command.append(f"http://127.0.0.1:{port}{_PATH}")
    output = subprocess.run(command, capture_output=True, text=True, check=False)
    found = _DONE.search(output.stdout)
    return int(found.group(1)) if found else 0


def _start(name: str, checkout: str, model: str, bench: Path) -> Server:
    port, rest_port = free_port(), free_port()
    environment = dict(os.environ)
    if checkout:
        folders = (f"{checkout}/services/{package}/src" for package in _PACKAGES)
        environment["PYTHONPATH"] = ":".join(folders)
    command = ["taskset", "-c", "1", str(REPO_ROOT / ".venv/bin/python")]
    command += ["-m", "modelserver", f"--port={port}", f"--rest_api_port={rest_port}"]
    command += [f"--model_config_file={bench}/servekit-{model}-registry.config"]
    log = (bench / "logs" / f"servercpu-{name}.log").open("wb")
    process = subprocess.Popen(
        [*command, "--host=127.0.0.1"], env=environment, stdout=log, stderr=log
    )
    status = f"http://127.0.0.1:{rest_port}/v1/models/{model}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(status, timeout=2) as answer:
                if b"AVAILABLE" in answer.read():
                    return Server(name, process, port)
        except OSError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"{name}: the model never became AVAILABLE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tabular")
    parser.add_argument("--checkout", action="append", required=True)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--bench", type=Path, default=REPO_ROOT / ".bench")
    args = parser.parse_args()
    frame = args.bench / "load" / f"{args.model}.predict.grpc-frame"
    servers: list[Server] = []
    try:
        for spec in args.checkout:
            name, _, checkout = spec.partition("=")
            servers.append(_start(name, checkout, args.model, args.bench))
        for server in servers:
            _h2load(server.port, frame, calls=2000)  # warm-up
        for number in range(args.rounds):
            for server in servers if number % 2 == 0 else servers[::-1]:
                before = _usage(server.process.pid)
                calls = max(1, _h2load(server.port, frame, seconds=args.seconds))
                after = _usage(server.process.pid)
                server.micros.append((after[0] - before[0]) * 1e6 / calls)
                server.per_call.append(
                    (
                        (after[1] - before[1]) / calls,
                        (after[2] - before[2]) / calls,
                        (after[3] - before[3]) / calls,
                    )
                )
        print(f"load average {os.getloadavg()}")
        for server in servers:
            reads, writes, switches = (
                statistics.median(values)
                for values in zip(*server.per_call, strict=True)
            )
            summary = {
                "checkout": server.name,
                "model": args.model,
                "server_cpu_us_per_call": round(statistics.median(server.micros)),
                "rounds": [round(value) for value in server.micros],
                "reads": round(reads, 2),
                "writes": round(writes, 2),
                "context_switches": round(switches, 2),
            }
            print(json.dumps(summary))
    finally:
        for server in servers:
            server.process.terminate()
        for server in servers:
            server.process.wait(timeout=60)


if __name__ == "__main__":
    main()
