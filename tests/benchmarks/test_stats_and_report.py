"""Percentiles, medians over rounds, target ratios and the Markdown tables."""

from __future__ import annotations

import math

import pytest

from benchmarks.cpuload import (
    busy_fractions,
    parse_pid_parent,
    parse_pid_stat,
    parse_proc_stat,
)
from benchmarks.interleaved import INPROCESS, Block, Turns, take_turns
from benchmarks.probes import ProbeError
from benchmarks.report import (
    Report,
    render_inprocess_table,
    render_load_table,
    render_markdown,
    render_turns_table,
    target_checks,
)
from benchmarks.results import LoadSummary, RunResult, aggregate, merge_inprocess
from benchmarks.stats import (
    paired_ratio,
    percentile,
    ratio,
    summarize_nanoseconds,
)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0, 3.0], 50) == 2.0


@pytest.mark.parametrize("q", [0, -1, 100.5])
def test_percentile_rejects_out_of_range(q: float) -> None:
    with pytest.raises(ValueError):
        percentile([1.0], q)


def test_summarize_nanoseconds_reports_milliseconds() -> None:
    summary = summarize_nanoseconds([3_000_000, 1_000_000, 2_000_000])
    assert summary.count == 3
    assert summary.p50_ms == 2.0
    assert summary.max_ms == 3.0
    assert summary.mean_ms == pytest.approx(2.0)


def test_paired_ratio_is_the_median_over_rounds() -> None:
    pairs = [(200.0, 100.0), (300.0, 100.0), (90.0, 100.0)]
    assert paired_ratio(pairs) == pytest.approx(2.0)
    assert math.isinf(ratio(1.0, 0.0))
    assert math.isnan(ratio(0.0, 0.0))


def load(rps: float, p50: float, p99: float, duration: float = 2.0) -> LoadSummary:
    return LoadSummary(
        requests=round(rps * duration),
        errors=0,
        duration_s=duration,
        p50_ms=p50,
        p90_ms=p99,
        p99_ms=p99,
        mean_ms=p50,
        max_ms=p99,
        client_cpu=0.1,
    )


def run(
    system: str,
    clients: int,
    rnd: int,
    rps: float,
    p50: float,
    p99: float,
    model: str = "tabular",
    protocol: str = "rest",
) -> RunResult:
    return RunResult(
        model=model,
        protocol=protocol,
        system=system,
        clients=clients,
        round=rnd,
        load=load(rps, p50, p99),
        core_busy=[0.3, 0.9],
    )


def test_aggregate_takes_medians_per_cell() -> None:
    runs = [
        run("servekit", 32, 1, 1000, 10, 20),
        run("servekit", 32, 2, 1200, 12, 30),
        run("servekit", 32, 3, 1100, 11, 25),
    ]
    (cell,) = aggregate(runs, server_cpu=1)
    assert cell.rps == pytest.approx(1100)
    assert (cell.p50_ms, cell.p99_ms) == (11, 25)
    assert cell.rounds == 3
    assert cell.server_core_busy == pytest.approx(0.9)


def sample_runs() -> list[RunResult]:
    runs = []
    for rnd in (1, 2):
        runs += [
            run("servekit-batching", 32, rnd, 1500, 20, 40),
            run("mlserver", 32, rnd, 300, 100, 200),
            run("mlserver-batching", 32, rnd, 600, 50, 90),
            run("fastapi", 32, rnd, 100, 300, 500),
            run("servekit", 1, rnd, 90, 10.5, 12),
            run("servekit-batching", 1, rnd, 80, 12.5, 14),
            run("gateway", 1, rnd, 85, 11.0 + 0.1 * rnd, 15),
            run("gateway", 32, rnd, 1300, 25, 45),
            run("relay", 1, rnd, 88, 13.0 + 0.2 * rnd, 15),
        ]
    return runs


def test_target_checks_compare_with_the_best_mlserver_configuration() -> None:
    checks = {
        check.name: check
        for check in target_checks(sample_runs(), [], (1, 32), "servekit-batching")
    }
    versus_mlserver = checks["tabular REST ×32: servekit (batching on) / best MLServer"]
    assert versus_mlserver.value == pytest.approx(2.5)
    # The goal is the compiled model's (issue 25): 8 times the best MLServer.
    assert versus_mlserver.goal == "≥ 8×"
    assert versus_mlserver.met is False
    assert "adaptive batching on" in versus_mlserver.detail
    versus_fastapi = checks["tabular REST ×32: servekit (batching on) / plain FastAPI"]
    assert versus_fastapi.value == pytest.approx(15.0)
    assert checks["tabular REST ×32: p99 vs best MLServer"].met is True
    gateway_rps = checks["tabular REST ×32: gateway / direct throughput"]
    assert gateway_rps.value == pytest.approx(1300 / 1500)
    assert gateway_rps.met is True
    # Without turns there is no 1-client target.
    assert not any("×1" in name for name in checks)
    assert not any(name.startswith("digits") for name in checks)


def limit(batch_one: float, batch_32: float) -> dict[str, object]:
    return {
        "results": [
            {
                "batch": 1,
                "calls": 10,
                "p50_ms": batch_one,
                "p99_ms": 1.0,
                "mean_ms": 1.0,
                "rows_per_s": 1.0,
            },
            {
                "batch": 32,
                "calls": 10,
                "p50_ms": batch_32,
                "p99_ms": 1.0,
                "mean_ms": 1.0,
                "rows_per_s": 1.0,
            },
        ],
        "process_filters": [],
    }


def test_inprocess_rounds_merge_into_medians() -> None:
    merged = merge_inprocess(
        {
            1: {"tabular": limit(10.0, 30.0), "digits": limit(0.3, 0.4)},
            2: {"tabular": limit(12.0, 34.0)},
            3: {"tabular": limit(11.5, 31.0)},
        }
    )
    tabular = merged["tabular"]
    assert [entry["p50_ms"] for entry in tabular["results"]] == [11.5, 31.0]
    assert tabular["results"][0]["calls"] == 30
    assert [entry["p50_ms"] for entry in merged["digits"]["results"]] == [0.3, 0.4]


def test_turns_add_the_median_of_each_cycles_difference() -> None:
    # The machine's speed moves between cycles, served and in-process alike.
    turns = Turns("tabular", "rest")
    turns.cycles = [
        {"servekit": 10.5, INPROCESS: 10.0, "gateway": 11.5},
        {"servekit": 20.9, INPROCESS: 20.0, "gateway": 21.2},
        {"servekit": 13.2, INPROCESS: 13.0},
    ]
    # Per cycle 0.5, 0.9 and 0.2; medians of the figures alone would give 1.3.
    assert turns.added("servekit", INPROCESS) == (pytest.approx(0.5), 3)
    assert turns.added("gateway", "servekit") == (pytest.approx(0.65), 2)
    assert turns.added("relay", "servekit") is None


def test_take_turns_rotates_the_order_and_drops_a_failing_source() -> None:
    order: list[str] = []
    failing = iter([False, True])

    def block(name: str, fails: bool = False) -> Block:
        def run(seconds: float) -> list[int]:
            assert seconds == 0.01
            order.append(name)
            if fails and next(failing):
                raise ProbeError("connection lost")
            return [2_000_000, 1_000_000, 3_000_000]

        return run

    turns = take_turns(
        "digits",
        "grpc",
        {"a": block("a"), "b": block("b", fails=True), INPROCESS: block(INPROCESS)},
        seconds=0.05,
        block_s=0.01,
    )
    # Cycle 1 in order; cycle 2 starts one further on and "b" fails; cycles 3 and
    # 4 rotate what is left.
    first_four = ["a", "b", INPROCESS, "b", INPROCESS, "a", "a", INPROCESS, INPROCESS]
    assert order[:9] == first_four
    assert turns.cycles[0] == {"a": 2.0, "b": 2.0, INPROCESS: 2.0}
    assert all("b" not in cycle for cycle in turns.cycles[1:])
    assert turns.failures == ["digits/grpc b: connection lost"]
    assert turns.calls("b") == 3
    assert turns.p50_ms("a") == 2.0


def test_one_client_targets_come_from_the_turns() -> None:
    turns = Turns("tabular", "grpc")
    turns.cycles = [
        {
            "servekit": 10.6,
            "servekit-batching": 11.5,
            "gateway": 12.0,
            "relay": 12.5,
            INPROCESS: 10.0,
        }
    ]
    turns.latencies_ns = {INPROCESS: [10_000_000]}
    checks = {
        check.name: check
        for check in target_checks([], [turns], (1,), "servekit-batching")
    }
    served = checks[
        "tabular gRPC ×1: servekit (batching off) p50 − in-process batch-1 p50"
    ]
    assert (served.value, served.met) == (pytest.approx(0.6), True)
    assert "median of 1 cycles; in-process 10.0 ms" in served.detail
    batched = checks[
        "tabular gRPC ×1: servekit (batching on) p50 − in-process batch-1 p50"
    ]
    assert (batched.value, batched.met) == (pytest.approx(1.5), False)
    gateway = checks["tabular gRPC ×1: gateway added p50"]
    assert (gateway.value, gateway.met) == (pytest.approx(0.5), True)
    relay = checks[
        "tabular gRPC ×1: bare relay added p50 (the hop's own cost, for reference)"
    ]
    assert (relay.value, relay.met) == (pytest.approx(1.0), None)


def test_turns_table_lists_the_inprocess_call_first() -> None:
    turns = Turns("digits", "rest")
    turns.cycles = [
        {"gateway": 0.9, "servekit": 0.5, "inprocess 1": 0.2, INPROCESS: 0.25}
    ]
    turns.latencies_ns = {
        "gateway": [900_000] * 3,
        "servekit": [500_000] * 4,
        "inprocess 1": [200_000] * 2,
        INPROCESS: [250_000] * 5,
    }
    lines = render_turns_table(turns).splitlines()
    assert lines[2] == "| in-process call (all its processes) | 5 | 0.25 | – |"
    assert lines[3] == "| in-process call, process 1 | 2 | 0.20 | – |"
    assert lines[4] == "| servekit (batching off) | 4 | 0.50 | +0.25 |"
    assert lines[5] == "| gateway → servekit | 3 | 0.90 | +0.65 |"


def test_the_inprocess_figure_of_a_cycle_is_the_median_of_its_processes() -> None:
    speeds = {"inprocess 1": 10_000_000, "inprocess 2": 12_000_000}
    speeds["inprocess 3"] = 11_500_000
    sources = {
        name: (lambda _seconds, value=value: [value]) for name, value in speeds.items()
    }
    turns = take_turns("tabular", "rest", sources, seconds=0.0001, block_s=0.01)
    assert turns.cycles[0][INPROCESS] == 11.5
    assert turns.calls(INPROCESS) == 3 * len(turns.cycles)


def test_load_table_lists_systems_by_concurrency() -> None:
    table = render_load_table(aggregate(sample_runs(), 1), "tabular", "rest")
    lines = table.splitlines()
    assert lines[0].startswith("| clients | system | req/s")
    assert lines[2].startswith("| 1 | servekit (batching off) | 90 |")
    assert "| 32 | plain FastAPI | 100 | 300.0 | 500.0 | 0 | – | 10% | 90% |" in lines


def test_markdown_has_sections_targets_and_notes() -> None:
    report = Report(
        meta={"rounds": 2, "duration": 2, "warmup": 1},
        runs=sample_runs(),
        notes=["a note"],
        failures=["round 1 x: failed"],
    )
    checks = target_checks(sample_runs(), [], (1, 32), "servekit-batching")
    markdown = render_markdown(report, checks)
    assert "## tabular · REST (wrk)" in markdown
    assert (
        "## Targets: throughput against MLServer and plain FastAPI, added latency at 1 "
        "client, the gateway's cost, the gRPC server against grpc.aio\n"
    ) in markdown
    assert "- a note" in markdown
    assert "## Failed runs" in markdown


def test_proc_stat_busy_excludes_idle_and_iowait() -> None:
    before = parse_proc_stat(
        "cpu  10 0 10 100 0 0 0 0 0 0\n"
        "cpu0 5 0 5 50 0 0 0 0 0 0\n"
        "cpu1 5 0 5 50 0 0 0 0 0 0\n"
    )
    after = parse_proc_stat(
        "cpu  0 0 0 0 0 0 0 0 0 0\n"
        "cpu0 15 0 5 140 10 0 0 0 0 0\n"
        "cpu1 95 0 5 60 0 0 0 0 0 0\n"
    )
    assert before == [(10, 60), (10, 60)]
    fractions = busy_fractions(before, after)
    assert fractions[0] == pytest.approx(10 / 110)
    assert fractions[1] == pytest.approx(90 / 100)


def test_drain_waits_for_the_abandoned_requests_at_the_measured_rate() -> None:
    from benchmarks.runner import MAX_DRAIN_SECONDS, drain_seconds

    assert drain_seconds(load(320, 100, 200), 32) == pytest.approx(0.1)
    assert drain_seconds(load(1, 100, 200), 32) == MAX_DRAIN_SECONDS
    assert drain_seconds(None, 1) == MAX_DRAIN_SECONDS


def test_pid_stat_fields_are_counted_after_the_command_name() -> None:
    line = "4242 (python -m x) S 1 4240 4240 0 -1 4194560 9 0 0 0 150 25 0 0 20 0 9 0"
    assert parse_pid_stat(line) == (4240, 175)
    assert parse_pid_parent(line) == (1, 175)


def test_server_cpu_per_request_is_reported_in_milliseconds() -> None:
    measured = RunResult(
        model="tabular",
        protocol="rest",
        system="servekit",
        clients=1,
        round=1,
        load=load(100, 10, 20),
        server_cpu_s=0.5,
    )
    assert measured.server_cpu_ms_per_request == pytest.approx(2.5)
    (cell,) = aggregate([measured], server_cpu=1)
    assert cell.server_cpu_ms_per_request == pytest.approx(2.5)


def test_inprocess_table_shows_both_warning_filter_settings() -> None:
    table = render_inprocess_table(
        {
            "tabular": {
                "results": [
                    {"batch": 1, "p50_ms": 15.4, "p99_ms": 16.2, "rows_per_s": 64.0}
                ],
                "process_filters": [{"batch": 1, "p50_ms": 17.6}],
            },
            "digits": {
                "results": [
                    {"batch": 1, "p50_ms": 0.28, "p99_ms": 0.4, "rows_per_s": 3500.0}
                ]
            },
        }
    )
    assert "| tabular | 1 | 15.400 | 16.200 | 64 | 17.600 |" in table
    assert "| digits | 1 | 0.280 | 0.400 | 3,500 | – |" in table
