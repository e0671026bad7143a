# mypy: disable-error-code="no-untyped-call,untyped-decorator"
"""servekit's load test: one model, one protocol, payloads from the model's own schema.

Configured by `SERVEKIT_*` environment variables (see README.md and settings.py), so
`servekit loadtest`, the compose `locust` profile and the Kubernetes master/worker
pods run this file unchanged. Locust's own options (`--host`, `--users`,
`--spawn-rate`, `--run-time`, `--csv`, `--html`) come from its command line,
`locust.conf` or `LOCUST_*` variables.

Only the chosen user class and shape class are module globals, because Locust runs
every user class and the first shape class it finds here.
"""

from __future__ import annotations

import locust.stats
from locust import events
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

import logging
import math
import sys
import time
from typing import Any

import gevent

from servekit.loadtest.requestlog import RequestLogWriter
from servekit.loadtest.slo import (
    Objective,
    SloSyntaxError,
    breached,
    evaluate,
    parse_slo,
)

import http_users
import shapes
from payloads import SchemaError
from settings import LoadSettings, SettingsError, load_settings

logger = logging.getLogger("servekit.locustfile")

# The live progress line of `servekit loadtest` reads the CSV history as it grows.
locust.stats.CSV_STATS_FLUSH_INTERVAL_SEC = 1

try:
    SETTINGS: LoadSettings = load_settings()
    OBJECTIVES: list[Objective] = parse_slo(SETTINGS.slo) if SETTINGS.slo else []
except (SettingsError, SloSyntaxError) as error:
    sys.exit(f"servekit locustfile: {error}")

ServekitUser: type[http_users.ModelUser] | type[Any]
if SETTINGS.protocol == "grpc":
    # Imported only for gRPC: it switches gRPC to gevent and needs servekit_protocol.
    import grpc_users

    ServekitUser = grpc_users.GrpcPredictUser
else:
    ServekitUser = {
        "rest": http_users.RestPredictUser,
        "v2": http_users.V2InferUser,
        "typed": http_users.TypedPredictUser,
    }[SETTINGS.protocol]
try:
    ServekitUser.configure(SETTINGS)
except SettingsError as error:
    sys.exit(f"servekit locustfile: {error}")
ServekitShape = shapes.SHAPE_CLASSES[SETTINGS.shape]

_request_log: RequestLogWriter | None = None


@events.init.add_listener
def prepare(environment: Environment, **_kwargs: Any) -> None:
    """Open the request log and build the payloads before the first user starts."""
    global _request_log
    if isinstance(environment.runner, MasterRunner):
        return
    if SETTINGS.request_log is not None:
        _request_log = RequestLogWriter(SETTINGS.request_log)
    # A worker learns the host only when the master starts the test; payloads from a
    # manifest need none, those from server metadata wait for the first user.
    if environment.host or SETTINGS.manifest or SETTINGS.registry:
        try:
            ServekitUser.prepare(environment.host or "")
        except SchemaError as error:
            # Failing here, before any user starts, beats a run of failed requests.
            sys.exit(f"servekit locustfile: cannot build payloads: {error}")
    # gevent's loop caches the time when it last ran, which was before the imports
    # and the payload build; Locust's --run-time timer would start from that stale
    # time and end the run early by as long as they took.
    gevent.get_hub().loop.update_now()


@events.request.add_listener
def log_request(
    request_type: str,
    name: str,
    response_time: float,
    response_length: int,
    exception: BaseException | None = None,
    start_time: float | None = None,
    **_kwargs: Any,
) -> None:
    """Append the request to the per-request latency log."""
    if _request_log is None:
        return
    _request_log.record(
        start=start_time
        if start_time is not None
        else time.time() - response_time / 1000,
        response_time_ms=response_time,
        request_type=request_type,
        name=name,
        response_length=response_length or 0,
        error=None if exception is None else str(exception) or type(exception).__name__,
    )


def _observe(stats: locust.stats.StatsEntry, objective: Objective) -> float:
    if stats.num_requests == 0:
        return math.nan
    if objective.kind == "errors":
        return float(stats.fail_ratio)
    if objective.kind == "rps":
        return float(stats.total_rps)
    if objective.metric == "mean":
        return float(stats.avg_response_time)
    if objective.metric == "max":
        return float(stats.max_response_time)
    percentile = objective.percentile or 100.0
    return float(stats.get_response_time_percentile(percentile / 100) or 0)


@events.quitting.add_listener
def settle_csv(environment: Environment, **_kwargs: Any) -> None:
    """Let Locust's CSV writer run once more before its files are closed.

    It rewrites `_stats.csv` once a second and is not asked for a final write:
    requests that finished during the stop timeout would be missing from it.
    """
    if getattr(environment.parsed_options, "csv_prefix", None):
        gevent.sleep(locust.stats.CSV_STATS_INTERVAL_SEC + 0.2)


@events.quitting.add_listener
def enforce_slo(environment: Environment, **_kwargs: Any) -> None:
    """Set the exit code from the SLO (on the master or a lone process)."""
    if _request_log is not None:
        _request_log.close()
    if not OBJECTIVES or isinstance(environment.runner, WorkerRunner):
        return
    verdicts = evaluate(
        OBJECTIVES, lambda objective: _observe(environment.stats.total, objective)
    )
    for verdict in verdicts:
        logger.info(
            "SLO %s: observed %s, %s",
            verdict.objective.text,
            verdict.objective.format_value(verdict.observed),
            "met" if verdict.passed else "BREACHED",
        )
    environment.process_exit_code = 1 if breached(verdicts) else 0
