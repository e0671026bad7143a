"""`servekit loadtest` against the real model server and gateway on 127.0.0.1.

One model server and one gateway serve a tiny scikit-learn pipeline for the whole
module. Each protocol's user runs a short, bounded test (3 users, a few seconds)
that must end with zero failures; its results folder must hold every artefact, and
the number of requests Locust counted must equal what the model server's (and,
through the gateway, the gateway's) Prometheus counters saw. The v2 run carries an SLO no server can meet and must exit
non-zero; the others carry a loose one and must exit zero (one run fewer keeps
the module within its time budget). Then `compare` works on two real runs, and
the locustfile runs distributed (master + worker) configured by environment
variables only, as the compose and Kubernetes deployments run it.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.models import publish_linear_pipeline
from tests.support.modelserver import METRICS_PATH, write_monitoring_config
from tests.support.processes import (
    REPO_ROOT,
    VENV_BIN,
    free_port,
    running_process,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "linear"
USERS = 3
DURATION = "6s"
LOOSE_SLO = "p99<10s,errors<0.5%"
IMPOSSIBLE_SLO = "p99<0.001ms,errors<1%"
# Rows per request: one, and a few to exercise batched payloads and answers.
BATCH_SIZES = {"rest": 1, "v2": 2, "typed": 3, "grpc": 2}
# protocol -> (SLO, expected exit code)
GATES = {
    "rest": (LOOSE_SLO, 0),
    "v2": (IMPOSSIBLE_SLO, 1),
    "typed": (LOOSE_SLO, 0),
    "grpc": (LOOSE_SLO, 0),
}
LOCUSTFILE = REPO_ROOT / "tests" / "load" / "locustfile.py"
ARTEFACTS = (
    "locust_stats.csv",
    "locust_stats_history.csv",
    "locust_failures.csv",
    "locust.html",
    "locust.log",
    "requests.csv",
    "summary.json",
    "report.html",
    "latency.png",
    "throughput.png",
    "histogram.png",
)


@dataclass(frozen=True)
class Servers:
    model_rest: str
    model_grpc: str
    gateway_http: str
    gateway_grpc: str

    def target(self, protocol: str) -> str:
        """REST goes to the model server directly; the rest through the gateway."""
        return {
            "rest": self.model_rest,
            "v2": self.gateway_http,
            "typed": self.gateway_http,
            "grpc": self.gateway_grpc,
        }[protocol]


@dataclass(frozen=True)
class LoadRun:
    out: Path
    result: subprocess.CompletedProcess[str]
    predictions_counted_by_server: float
    requests_counted_by_gateway: float

    @property
    def summary(self) -> dict[str, object]:
        loaded: dict[str, object] = json.loads((self.out / "summary.json").read_text())
        return loaded


def _model_available(rest_url: str) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            with urllib.request.urlopen(
                f"{rest_url}/v1/models/{MODEL}", timeout=2
            ) as answer:
                states = [s["state"] for s in json.load(answer)["model_version_status"]]
        except (OSError, ValueError, KeyError):
            return False
        return "AVAILABLE" in states

    return probe


def _counted(url: str, sample_name: str, **labels: str) -> float:
    """The sum of a Prometheus sample over the series matching `labels`."""
    with urllib.request.urlopen(url, timeout=5) as answer:
        text = answer.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == sample_name
        and all(sample.labels.get(key) == value for key, value in labels.items())
    )


def predictions_counted(rest_url: str) -> float:
    """The model server's count of answered predict calls for the model."""
    return _counted(
        rest_url + METRICS_PATH,
        "modelserver_request_count_total",
        model=MODEL,
        api="predict",
    )


def gateway_requests_counted(http_url: str) -> float:
    """The gateway's count of requests for the model (any protocol)."""
    return _counted(
        http_url + "/metrics", "gateway_request_duration_seconds_count", model=MODEL
    )


@pytest.fixture(scope="module")
def registry_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("registry")
    publish_linear_pipeline(root, MODEL)
    return root


@pytest.fixture(scope="module")
def servers(
    registry_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Servers]:
    logs = tmp_path_factory.mktemp("server-logs")
    monitoring = write_monitoring_config(logs)
    grpc_port, rest_port = free_port(), free_port()
    model_rest = f"http://127.0.0.1:{rest_port}"
    with running_process(
        [
            VENV_BIN / "servekit-model-server",
            "--host=127.0.0.1",
            f"--port={grpc_port}",
            f"--rest_api_port={rest_port}",
            f"--model_config_file={registry_root / 'servekit.config'}",
            f"--monitoring_config_file={monitoring}",
        ],
        log_path=logs / "modelserver.log",
        ready=_model_available(model_rest),
    ):
        ready_file = logs / "gateway-ready.json"
        with running_process(
            [
                VENV_BIN / "servekit-gateway",
                "--host=127.0.0.1",
                "--port=0",
                "--grpc-port=0",
                f"--registry={registry_root}",
                f"--default-backend=127.0.0.1:{grpc_port}",
                f"--ready-file={ready_file}",
                # These tests match Locust's request count against the model
                # server's call count; merged calls would make the server count
                # fewer calls than requests (coalescing has its own tests).
                "--coalesce-max-rows=0",
            ],
            log_path=logs / "gateway.log",
            ready=ready_file.exists,
        ):
            ports = json.loads(ready_file.read_text())
            yield Servers(
                model_rest=model_rest,
                model_grpc=f"127.0.0.1:{grpc_port}",
                gateway_http=f"http://127.0.0.1:{ports['http_port']}",
                gateway_grpc=f"127.0.0.1:{ports['grpc_port']}",
            )


def _environment() -> dict[str, str]:
    # The tests choose the registry explicitly; a developer's own must not leak in.
    return {k: v for k, v in os.environ.items() if not k.startswith("SERVEKIT_")}


def servekit_loadtest(
    *args: object, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "servekit"), "loadtest", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env=_environment(),
        check=False,
    )


@pytest.fixture(scope="module")
def protocol_run(
    servers: Servers, registry_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], LoadRun]:
    """Runs each protocol's load test once per module, on first request."""
    done: dict[str, LoadRun] = {}

    def run(protocol: str) -> LoadRun:
        if protocol not in done:
            out = tmp_path_factory.mktemp("runs") / protocol
            # REST and typed take payloads from the registry's manifest; v2 and
            # gRPC from the server's metadata endpoint.
            registry = (
                ["--registry", registry_root] if protocol in ("rest", "typed") else []
            )
            before = predictions_counted(servers.model_rest)
            gateway_before = gateway_requests_counted(servers.gateway_http)
            result = servekit_loadtest(
                "--target", servers.target(protocol),
                "--model", MODEL,
                "--protocol", protocol,
                "--users", USERS,
                "--spawn-rate", USERS,
                "--duration", DURATION,
                "--batch-size", BATCH_SIZES[protocol],
                "--slo", GATES[protocol][0],
                "--out", out,
                *registry,
            )  # fmt: skip
            after = predictions_counted(servers.model_rest)
            gateway_after = gateway_requests_counted(servers.gateway_http)
            done[protocol] = LoadRun(
                out, result, after - before, gateway_after - gateway_before
            )
        return done[protocol]

    return run


def _aggregated_row(stats_csv: Path) -> dict[str, str]:
    with stats_csv.open() as handle:
        rows = [row for row in csv.DictReader(handle) if row["Name"] == "Aggregated"]
    assert rows, f"{stats_csv} has no Aggregated row"
    return rows[-1]


@pytest.mark.parametrize("protocol", list(GATES))
def test_protocol_run_has_no_failures_and_agrees_with_the_server(
    protocol: str, protocol_run: Callable[[str], LoadRun]
) -> None:
    run = protocol_run(protocol)
    expected_exit = GATES[protocol][1]
    assert run.result.returncode == expected_exit, run.result.stdout + run.result.stderr
    for name in ARTEFACTS:
        assert (run.out / name).is_file(), f"{name} missing"
    for name in ("latency.png", "throughput.png", "histogram.png"):
        data = (run.out / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    summary = run.summary
    totals = summary["totals"]
    assert isinstance(totals, dict)
    requests = int(totals["requests"])
    assert totals["failures"] == 0, summary["errors"]
    assert requests > 20
    # Three counts of one run: the request log, Locust's own CSV, the server.
    logged = len((run.out / "requests.csv").read_text().splitlines()) - 1
    assert logged == requests
    locust_count = int(_aggregated_row(run.out / "locust_stats.csv")["Request Count"])
    assert locust_count == requests
    assert requests <= run.predictions_counted_by_server <= requests + USERS
    if protocol == "rest":
        assert run.requests_counted_by_gateway == 0
    else:
        # Metadata reads for the payload schema may add one per Locust process.
        assert requests <= run.requests_counted_by_gateway <= requests + USERS
    history = run.out / "locust_stats_history.csv"
    assert len(history.read_text().splitlines()) > 5
    assert "<html" in (run.out / "locust.html").read_text().lower()
    report = (run.out / "report.html").read_text()
    assert MODEL in report and 'src="latency.png"' in report
    assert "req/s" in run.result.stdout and "p99 ms" in run.result.stdout


def test_loose_slo_passes(protocol_run: Callable[[str], LoadRun]) -> None:
    slo = protocol_run("rest").summary["slo"]
    assert isinstance(slo, dict)
    assert slo["text"] == LOOSE_SLO and slo["passed"] is True


def test_impossible_slo_fails_the_run(protocol_run: Callable[[str], LoadRun]) -> None:
    run = protocol_run("v2")
    assert run.result.returncode == 1
    slo = run.summary["slo"]
    assert isinstance(slo, dict) and slo["passed"] is False
    verdicts = {o["objective"]: o["passed"] for o in slo["objectives"]}
    assert verdicts == {"p99<0.001ms": False, "errors<1%": True}
    assert "BREACHED" in run.result.stdout


def test_compare_two_real_runs(
    protocol_run: Callable[[str], LoadRun], tmp_path: Path
) -> None:
    rest, grpc = protocol_run("rest"), protocol_run("grpc")
    plot = tmp_path / "compare.png"
    result = subprocess.run(
        [
            str(VENV_BIN / "servekit"),
            "loadtest",
            "compare",
            str(rest.out),
            str(grpc.out),
            "--out",
            str(plot),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    comparison = json.loads(result.stdout)
    deltas = {d["metric"]: d for d in comparison["deltas"]}
    rest_rps = rest.summary["totals"]["rps"]  # type: ignore[index]
    grpc_rps = grpc.summary["totals"]["rps"]  # type: ignore[index]
    assert deltas["req/s"]["a"] == pytest.approx(rest_rps)
    assert deltas["req/s"]["change"] == pytest.approx(grpc_rps - rest_rps)
    assert "p99 latency" in deltas
    assert plot.read_bytes().startswith(b"\x89PNG") and plot.stat().st_size > 20_000
    assert "req/s" in result.stderr


def test_locustfile_runs_distributed_from_environment_variables(
    servers: Servers, registry_root: Path, tmp_path: Path
) -> None:
    master_port = free_port()
    env = {
        **_environment(),
        "SERVEKIT_MODEL": MODEL,
        "SERVEKIT_PROTOCOL": "typed",
        "SERVEKIT_REGISTRY": str(registry_root),
        # One objective that holds and one no run on this machine can meet.
        "SERVEKIT_SLO": "p99<10s,rps>1000000",
    }
    locust = [
        str(VENV_BIN / "locust"),
        "-f",
        str(LOCUSTFILE),
        "--config",
        str(LOCUSTFILE.with_name("locust.conf")),
    ]
    with running_process(
        [
            *locust,
            "--worker",
            "--master-host=127.0.0.1",
            f"--master-port={master_port}",
        ],
        log_path=tmp_path / "worker.log",
        env=env,
    ) as worker:
        master = subprocess.run(
            [
                *locust,
                "--master",
                "--master-bind-host=127.0.0.1",
                f"--master-bind-port={master_port}",
                "--expect-workers=1",
                "--expect-workers-max-wait=30",
                f"--host={servers.gateway_http}",
                "--users=2",
                "--spawn-rate=2",
                "--run-time=5s",
                f"--csv={tmp_path / 'dist'}",
                f"--html={tmp_path / 'dist.html'}",
            ],
            capture_output=True,
            text=True,
            timeout=90,
            env=env,
            check=False,
        )
        wait_until(
            lambda: worker.popen.poll() is not None,
            timeout=20,
            what="the worker to exit",
        )
    output = master.stdout + master.stderr
    assert master.returncode == 1, output
    assert re.search(r"SLO p99<10s: observed [^\n]*, met", output), output
    assert re.search(r"SLO rps>1000000: observed [^\n]*, BREACHED", output), output
    row = _aggregated_row(tmp_path / "dist_stats.csv")
    assert int(row["Request Count"]) > 10
    assert int(row["Failure Count"]) == 0
    assert (tmp_path / "dist.html").stat().st_size > 1000
    assert "payloads from manifest" in worker.log_text()
