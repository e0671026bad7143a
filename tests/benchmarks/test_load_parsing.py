"""Reading what wrk and h2load print (no load generator runs here)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from benchmarks.h2load import H2loadError, grpc_frame, h2load_command, parse_output
from benchmarks.targets import GrpcTarget, HttpTarget
from benchmarks.wrk import (
    LUA_SCRIPT,
    SUMMARY_PREFIX,
    WrkError,
    parse_summary,
    wrk_command,
)


def wrk_line(**overrides: float) -> str:
    data: dict[str, float] = {
        "requests": 1200,
        "duration_us": 2_000_000,
        "bytes": 99,
        "connect": 0,
        "read": 0,
        "write": 0,
        "status": 0,
        "timeout": 0,
        "min_us": 500.0,
        "max_us": 9000.0,
        "mean_us": 1650.5,
        "p50_us": 1500.0,
        "p90_us": 2500.0,
        "p99_us": 4000.0,
    }
    data.update(overrides)
    return SUMMARY_PREFIX + json.dumps(data)


def test_wrk_summary_becomes_rate_and_milliseconds() -> None:
    output = "Running 2s test @ http://127.0.0.1:1/x\n" + wrk_line() + "\n"
    summary = parse_summary(output)
    assert summary.requests == 1200
    assert summary.rps == pytest.approx(600.0)
    assert (summary.p50_ms, summary.p90_ms, summary.p99_ms) == (1.5, 2.5, 4.0)
    assert summary.mean_ms == pytest.approx(1.6505)
    assert summary.errors == 0
    assert summary.error_kinds == {}


def test_wrk_errors_are_summed_by_kind() -> None:
    summary = parse_summary(wrk_line(status=7, timeout=2))
    assert summary.errors == 9
    assert summary.error_kinds == {"status": 7, "timeout": 2}


def test_wrk_run_without_completed_requests_is_an_error() -> None:
    with pytest.raises(WrkError, match="no request completed"):
        parse_summary(wrk_line(requests=0, timeout=32))


def test_wrk_output_without_summary_is_an_error() -> None:
    with pytest.raises(WrkError, match="no summary"):
        parse_summary("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_wrk_command_pins_one_thread_and_passes_the_body_file() -> None:
    target = HttpTarget("http://127.0.0.1:9/v1/models/m:predict", Path("/b.json"))
    command = wrk_command(target, script=Path("/s.lua"), clients=32, seconds=5, cpu=0)
    assert command[:3] == ["taskset", "-c", "0"]
    assert "-t1" in command
    assert "-c32" in command
    assert "-d5s" in command
    assert command[-4:] == [target.url, "--", "/b.json", "application/json"]
    unpinned = wrk_command(
        target, script=Path("/s.lua"), clients=1, seconds=5, cpu=None
    )
    assert unpinned[0] == "wrk"


def test_lua_script_prints_the_prefix_the_parser_reads() -> None:
    assert f'"{SUMMARY_PREFIX}"' in LUA_SCRIPT
    assert "latency:percentile(99)" in LUA_SCRIPT


H2LOAD_OUTPUT = """\
finished in 3.00s, 1615.67 req/s, 101.01KB/s
requests: 4 total, 4 started, 4 done, 4 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 4 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 303.02KB (310293) total, 19.48KB (19950) headers (space savings 96.28%), {data_text} data
"""


def h2load_output(data_bytes: int) -> str:
    return H2LOAD_OUTPUT.format(data_text=f"1KB ({data_bytes})")


def h2load_log(latencies_us: list[int], status: int = 200) -> str:
    return "".join(
        f"{1795484162774533 + index}\t{status}\t{value}\n"
        for index, value in enumerate(latencies_us)
    )


def test_h2load_percentiles_come_from_the_per_request_log() -> None:
    summary = parse_output(
        h2load_output(4 * 72), h2load_log([400, 100, 300, 200]), 2.0, 67
    )
    assert summary.requests == 4
    assert summary.rps == pytest.approx(2.0)
    assert summary.p50_ms == pytest.approx(0.2)
    assert summary.p99_ms == pytest.approx(0.4)
    assert summary.max_ms == pytest.approx(0.4)
    assert summary.errors == 0


def test_h2load_counts_calls_without_an_answer_as_grpc_failures() -> None:
    # Two answers of 67 + 5 bytes arrived for four calls: two failed trailers-only.
    summary = parse_output(
        h2load_output(2 * 72), h2load_log([100, 100, 100, 100]), 1.0, 67
    )
    assert summary.errors == 2
    assert summary.error_kinds == {"grpc_status": 2}


def test_h2load_non_200_rows_are_http_failures() -> None:
    log = h2load_log([100, 100]) + h2load_log([50], status=503)
    summary = parse_output(h2load_output(2 * 72), log, 1.0, 67)
    assert summary.error_kinds == {"http": 1}
    assert summary.requests == 4


def test_h2load_without_completed_requests_is_an_error() -> None:
    with pytest.raises(H2loadError, match="no request completed"):
        parse_output(h2load_output(0), "", 1.0, 67)


def test_grpc_frame_prefixes_flag_and_big_endian_length() -> None:
    frame = grpc_frame(b"abc")
    assert frame[:5] == struct.pack(">BI", 0, 3)
    assert frame[5:] == b"abc"


def test_h2load_command_posts_grpc_to_the_method_path() -> None:
    target = GrpcTarget(
        "127.0.0.1:8500",
        "/tensorflow.serving.PredictionService/Predict",
        Path("/r.bin"),
    )
    command = h2load_command(
        target,
        frame_file=Path("/r.frame"),
        clients=8,
        seconds=3,
        log_file=Path("/log"),
        cpu=0,
    )
    assert command[:3] == ["taskset", "-c", "0"]
    assert "--clients=8" in command
    assert "--max-concurrent-streams=1" in command
    assert "--header=content-type: application/grpc" in command
    assert command[-1] == (
        "http://127.0.0.1:8500/tensorflow.serving.PredictionService/Predict"
    )
