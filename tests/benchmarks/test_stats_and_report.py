"""Percentiles, medians over rounds, target ratios and the Markdown tables."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest

from benchmarks.cpuload import busy_fractions, parse_pid_stat, parse_proc_stat
from benchmarks.report import (
    Report,
    TargetCheck,
    merge_inprocess,
    render_inprocess_table,
    render_load_table,
    render_markdown,
    target_checks,
)
from benchmarks.results import LoadSummary, RunResult, aggregate
from benchmarks.runner import Bracket
from benchmarks.stats import (
    paired_difference,
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


def test_paired_ratio_and_difference_are_medians_over_rounds() -> None:
    pairs = [(200.0, 100.0), (300.0, 100.0), (90.0, 100.0)]
    assert paired_ratio(pairs) == pytest.approx(2.0)
    assert paired_difference([(5.0, 4.0), (5.0, 2.0), (5.0, 4.5)]) == 1.0
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
    inprocess = {
        "tabular": {
            "results": [{"batch": 1, "p50_ms": 10.0}, {"batch": 32, "p50_ms": 30.0}]
        }
    }
    checks = {
        check.name: check
        for check in target_checks(
            sample_runs(), inprocess, (1, 32), "servekit-batching"
        )
    }
    versus_mlserver = checks["tabular REST ×32: servekit (batching on) / best MLServer"]
    assert versus_mlserver.value == pytest.approx(2.5)
    assert versus_mlserver.met is True
    assert "adaptive batching on" in versus_mlserver.detail
    versus_fastapi = checks["tabular REST ×32: servekit (batching on) / plain FastAPI"]
    assert versus_fastapi.value == pytest.approx(15.0)
    assert checks["tabular REST ×32: p99 vs best MLServer"].met is True
    one_client = checks[
        "tabular REST ×1: servekit (batching off) p50 − in-process batch-1 p50"
    ]
    assert one_client.value == pytest.approx(0.5)
    assert one_client.met is True
    batched_one = checks[
        "tabular REST ×1: servekit (batching on) p50 − in-process batch-1 p50"
    ]
    assert batched_one.met is False
    gateway_p50 = checks["tabular REST ×1: gateway added p50"]
    # Per round: 11.1 - 12.5 and 11.2 - 12.5, so the gateway run was faster here.
    assert gateway_p50.value == pytest.approx(-1.35)
    gateway_rps = checks["tabular REST ×32: gateway / direct throughput"]
    assert gateway_rps.value == pytest.approx(1300 / 1500)
    assert gateway_rps.met is True
    relay = checks[
        "tabular REST ×1: bare relay added p50 (the hop's own cost, for reference)"
    ]
    # Per round: 13.2 - 12.5 and 13.4 - 12.5; a reference, not a target.
    assert relay.value == pytest.approx(0.8)
    assert relay.met is None
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


def test_inprocess_rounds_merge_into_medians_and_keep_each_round() -> None:
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
    assert tabular["rounds"] == {1: 10.0, 2: 12.0, 3: 11.5}
    assert merged["digits"]["rounds"] == {1: 0.3}


def one_client_check(runs: list[RunResult], inprocess: dict[str, Any]) -> TargetCheck:
    """The batching-off `tabular` REST 1-client check of these runs."""
    (check,) = [
        check
        for check in target_checks(runs, inprocess, (1,), "servekit-batching")
        if check.name
        == "tabular REST ×1: servekit (batching off) p50 − in-process batch-1 p50"
    ]
    return check


def test_one_client_targets_pair_each_round_with_its_inprocess_call() -> None:
    # The machine's speed moves between rounds, served and in-process alike.
    served = (10.5, 12.9, 11.0)
    direct = (10.0, 12.0, 10.8)
    runs = [run("servekit", 1, rnd, 90, p50, 14) for rnd, p50 in enumerate(served, 1)]
    inprocess = merge_inprocess(
        {rnd: {"tabular": limit(p50, 30.0)} for rnd, p50 in enumerate(direct, 1)}
    )
    one_client = one_client_check(runs, inprocess)
    # Per round 0.5, 0.9 and 0.2; the medians alone would give 11.0 - 10.8.
    assert one_client.value == pytest.approx(0.5)
    assert "paired by round" in one_client.detail


def bracketed(run_result: RunResult, reference: float) -> RunResult:
    return replace(run_result, reference_p50_ms=reference)


def test_one_client_targets_use_each_runs_own_inprocess_reference() -> None:
    # Against the rounds' in-process figure (20.4 ms) the runs would add 2.0 and
    # 0.2 ms; against the references taken around each run, which followed the
    # machine's drift, 0.4 and 0.6.
    runs = [
        bracketed(run("servekit", 1, 1, 90, 22.4, 25), 22.0),
        bracketed(run("servekit", 1, 2, 90, 20.6, 25), 20.0),
    ]
    inprocess = merge_inprocess({rnd: {"tabular": limit(20.4, 30.0)} for rnd in (1, 2)})
    one_client = one_client_check(runs, inprocess)
    assert one_client.value == pytest.approx(0.5)
    assert "in-process call around each run" in one_client.detail


def test_gateway_added_p50_cancels_drift_between_the_two_runs() -> None:
    # Between the direct run and the gateway run the machine slowed by 1.5 ms.
    runs = [
        bracketed(run("servekit-batching", 1, 1, 90, 20.5, 25), 20.0),
        bracketed(run("gateway", 1, 1, 90, 22.3, 25), 21.5),
        bracketed(run("relay", 1, 1, 90, 21.0, 25), 20.0),
    ]
    checks = {
        check.name: check
        for check in target_checks(runs, {}, (1,), "servekit-batching")
    }
    gateway = checks["tabular REST ×1: gateway added p50"]
    assert gateway.value == pytest.approx(0.3)
    assert gateway.met
    assert "in-process reference" in gateway.detail
    relay = checks[
        "tabular REST ×1: bare relay added p50 (the hop's own cost, for reference)"
    ]
    assert relay.value == pytest.approx(0.5)


def test_gateway_added_p50_pairs_raw_rounds_without_references() -> None:
    runs = [
        run("servekit-batching", 1, 1, 90, 20.5, 25),
        run("gateway", 1, 1, 90, 22.3, 25),
    ]
    (gateway,) = [
        check
        for check in target_checks(runs, {}, (1,), "servekit-batching")
        if check.name == "tabular REST ×1: gateway added p50"
    ]
    assert gateway.value == pytest.approx(1.8)
    assert gateway.met is False
    assert "paired by round" in gateway.detail


def test_bracket_shares_the_measurement_between_runs_of_one_model() -> None:
    measured: list[str] = []
    values = iter([10.0, 12.0, 11.0, 0.3, 0.5, 9.0])

    def reference(model: str) -> float | None:
        measured.append(model)
        return next(values)

    bracket = Bracket(reference)
    first = bracket.after("tabular", bracket.before("tabular"))
    second = bracket.after("tabular", bracket.before("tabular"))
    other = bracket.after("digits", bracket.before("digits"))
    bracket.forget()
    after_forget = bracket.before("digits")
    assert (first, second, other) == (11.0, 11.5, 0.4)
    assert after_forget == 9.0
    assert measured == ["tabular", "tabular", "tabular", "digits", "digits", "digits"]


def test_bracket_gives_no_reference_when_a_side_failed() -> None:
    values = iter([10.0, None])
    bracket = Bracket(lambda _model: next(values))
    assert bracket.after("tabular", bracket.before("tabular")) is None


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
    checks = target_checks(sample_runs(), {}, (1, 32), "servekit-batching")
    markdown = render_markdown(report, checks)
    assert "## tabular · REST (wrk)" in markdown
    assert "## Targets (issues 3 and 4)" in markdown
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
