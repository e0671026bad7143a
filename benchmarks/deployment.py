"""What the bench deploys: scenarios (a system, a model, a protocol), the started
processes behind them, and the one real request each is checked with."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from benchmarks.servers import ServerProcess, StartError, grpc_call, http_post
from benchmarks.targets import GrpcTarget, HttpTarget


@dataclass(frozen=True)
class Scenario:
    """One system serving one model over one protocol: a thing to load."""

    model: str
    protocol: str
    system: str
    target: HttpTarget | GrpcTarget
    process_groups: tuple[int, ...] = ()
    """The serving processes' groups, whose CPU time each run reports."""


@dataclass
class Deployment:
    """The started systems' scenarios, with notes for the report."""

    scenarios: list[Scenario] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    startup_seconds: dict[str, float] = field(default_factory=dict)
    answers: dict[str, str] = field(default_factory=dict)


@dataclass
class Pending:
    """A started process, one readiness probe per model, and what it will serve."""

    process: ServerProcess
    probes: dict[str, Callable[[], bool]]
    scenarios: list[Scenario] = field(default_factory=list)
    backends: dict[str, Pending] = field(default_factory=dict)
    """Model -> the process behind this one that serves it (for the gateway)."""
    ready: set[str] = field(default_factory=set)
    address: str = ""
    """The gRPC address, for a model server."""
    rest_address: str = ""
    """The REST address (host:port), for a model server."""


def excerpt(body: bytes, limit: int = 100) -> str:
    text = body.decode("utf-8", errors="replace").replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "…"


def check_scenario(scenario: Scenario) -> tuple[Scenario, str]:
    """Send one real request; return the scenario (with the answer size) and answer.

    Raises:
        StartError: The system answered an error.
    """
    target = scenario.target
    where = f"{scenario.system} {scenario.model}/{scenario.protocol}"
    if isinstance(target, HttpTarget):
        status, body = http_post(
            target.url,
            target.body_file.read_bytes(),
            target.content_type,
            headers=target.headers,
        )
        if status != 200:
            raise StartError(f"{where}: HTTP {status}: {excerpt(body, 400)}")
        try:
            json.loads(body)
        except ValueError as exc:
            raise StartError(f"{where}: answer is not JSON: {excerpt(body)}") from exc
        return scenario, excerpt(body)
    import grpc

    try:
        answer = grpc_call(
            target.address, target.path, target.request_file.read_bytes()
        )
    except grpc.RpcError as exc:
        raise StartError(f"{where}: gRPC call failed: {exc}") from exc
    checked = replace(scenario, target=replace(target, response_bytes=len(answer)))
    return checked, f"{len(answer)} bytes"


def scenarios(
    model: str,
    system: str,
    protocols: tuple[str, ...],
    http: HttpTarget | None,
    rpc: GrpcTarget | None,
) -> list[Scenario]:
    found: list[Scenario] = []
    if http is not None and "rest" in protocols:
        found.append(Scenario(model, "rest", system, http))
    if rpc is not None and "grpc" in protocols:
        found.append(Scenario(model, "grpc", system, rpc))
    return found
