"""The SLO grammar and its verdicts."""

from __future__ import annotations

import math

import pytest
from servekit.loadtest.slo import (
    Objective,
    SloSyntaxError,
    breached,
    evaluate,
    parse_slo,
)


@pytest.mark.parametrize(
    ("text", "metric", "comparison", "threshold"),
    [
        ("p99<50ms", "p99", "<", 50.0),
        ("p99.9 <= 1s", "p99.9", "<=", 1000.0),
        ("p999<2", "p99.9", "<", 2.0),
        ("median<800us", "p50", "<", 0.8),
        ("max<3µs", "max", "<", 0.003),
        ("avg<=4ms", "mean", "<=", 4.0),
        ("errors<0.1%", "errors", "<", 0.001),
        ("errors<0.02", "errors", "<", 0.02),
        ("rps>=100/s", "rps", ">=", 100.0),
        ("P95 < 20 MS", "p95", "<", 20.0),
    ],
)
def test_objective_is_parsed_in_canonical_units(
    text: str, metric: str, comparison: str, threshold: float
) -> None:
    (objective,) = parse_slo(text)
    assert (objective.metric, objective.comparison) == (metric, comparison)
    assert objective.threshold == pytest.approx(threshold)


def test_several_objectives_keep_their_order() -> None:
    objectives = parse_slo("p99<50ms, errors<0.1% ,rps>10")
    assert [o.metric for o in objectives] == ["p99", "errors", "rps"]
    assert [o.kind for o in objectives] == ["latency", "errors", "rps"]


@pytest.mark.parametrize(
    "text",
    [
        "",
        " , ",
        "p99=5ms",
        "p99<50km",
        "foo<1",
        "p0<1ms",
        "p101<1ms",
        "errors<1ms",
        "rps>5ms",
    ],
)
def test_malformed_slo_is_refused(text: str) -> None:
    with pytest.raises(SloSyntaxError):
        parse_slo(text)


def test_verdicts_compare_observed_values() -> None:
    objectives = parse_slo("p99<50ms,errors<1%,rps>=10")
    observed = {"p99": 49.9, "errors": 0.01, "rps": 10.0}
    verdicts = evaluate(objectives, lambda o: observed[o.metric])
    assert [v.passed for v in verdicts] == [True, False, True]
    assert breached(verdicts)
    assert not breached(verdicts[:1])


def test_no_data_never_meets_an_objective() -> None:
    objective = Objective("p99<50ms", "p99", "<", 50.0)
    assert not objective.holds(math.nan)
    assert objective.format_value(math.nan) == "no data"
