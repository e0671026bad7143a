"""Summary numbers from a request log written by the locustfile's writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from servekit.loadtest.report import judge, read_requests, summarize
from servekit.loadtest.requestlog import RequestLogWriter
from servekit.loadtest.slo import parse_slo

LATENCIES = [float(ms) for ms in range(1, 101)]  # 1..100 ms


@pytest.fixture
def request_log(tmp_path: Path) -> Path:
    path = tmp_path / "requests.csv"
    writer = RequestLogWriter(path)
    for index, latency in enumerate(LATENCIES):
        name = "/v1/models/m:predict" if index % 2 else "Predict m"
        failed = index in (10, 20)
        writer.record(
            start=1000.0 + index * 0.1,
            response_time_ms=latency,
            request_type="POST" if index % 2 else "grpc",
            name=name,
            response_length=10,
            error="HTTP 503 overloaded,\nretry" if failed else None,
        )
    writer.close()
    return path


def test_summary_counts_and_percentiles(request_log: Path) -> None:
    requests = read_requests(request_log)
    summary = summarize(requests, {"batch_size": 4}, None)
    totals = summary["totals"]
    assert totals["requests"] == 100
    assert totals["failures"] == 2
    assert totals["error_rate"] == pytest.approx(0.02)
    assert totals["latency_ms"]["p50"] == pytest.approx(np.percentile(LATENCIES, 50))
    assert totals["latency_ms"]["p99"] == pytest.approx(np.percentile(LATENCIES, 99))
    assert totals["latency_ms"]["max"] == 100.0
    # From the first start (1000.0) to the last end (1009.9 + 0.1 s).
    assert totals["duration_seconds"] == pytest.approx(10.0)
    assert totals["rps"] == pytest.approx(10.0)
    assert totals["rows_per_second"] == pytest.approx(40.0)
    assert {e["name"]: e["requests"] for e in summary["endpoints"]} == {
        "/v1/models/m:predict": 50,
        "Predict m": 50,
    }
    (error,) = summary["errors"]
    assert error == {
        "name": "Predict m",
        "error": "HTTP 503 overloaded, retry",
        "count": 2,
    }


def test_slo_is_judged_on_exact_latencies(request_log: Path) -> None:
    requests = read_requests(request_log)
    verdicts = judge(requests, parse_slo("p50<51ms,p99<99ms,errors<=2%,rps>20"))
    assert [v.passed for v in verdicts] == [True, False, True, False]
    assert verdicts[1].observed == pytest.approx(np.percentile(LATENCIES, 99))
