"""Service-level objectives: parse `"p99<50ms,errors<0.1%"`, evaluate, give a verdict.

Standard library only: the locustfile imports this module too, to gate distributed
runs on the master with the same grammar.

Grammar (comma-separated objectives, spaces ignored)::

    objective  := metric comparison number [unit]
    metric     := p<percentile> | median | mean | avg | max | errors | rps
    comparison := < | <= | > | >=
    unit       := ms | s | us   (latency; default ms)
                | %             (errors; without it the number is a fraction)
                | /s | rps      (rps)

`p999` means the 99.9th percentile (as in `p99.9`).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

_COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_OBJECTIVE = re.compile(
    r"^(?P<metric>[a-z_]+[0-9.]*)(?P<comparison><=|>=|<|>)"
    r"(?P<number>[0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)(?P<unit>[a-z%/µμ]*)$"
)
_LATENCY_UNITS_MS = {
    "": 1.0,
    "ms": 1.0,
    "s": 1000.0,
    "us": 0.001,
    "µs": 0.001,
    "μs": 0.001,
}
_METRIC_ALIASES = {
    "median": "p50",
    "avg": "mean",
    "average": "mean",
    "error": "errors",
    "error_rate": "errors",
    "failures": "errors",
    "throughput": "rps",
}


def format_milliseconds(value: float) -> str:
    """A latency with the decimals that matter: 0.042 ms, 4.21 ms, 42.1 ms, 4210 ms."""
    if value >= 100:
        return f"{value:.0f} ms"
    if value >= 10:
        return f"{value:.1f} ms"
    if value >= 0.1:
        return f"{value:.2f} ms"
    return f"{value:.3g} ms"


class SloSyntaxError(ValueError):
    """The objective text does not follow the grammar."""


@dataclass(frozen=True)
class Objective:
    """One objective, its threshold in canonical units (ms, fraction, req/s)."""

    text: str
    metric: str
    """`p<q>`, `mean`, `max`, `errors` or `rps`."""
    comparison: str
    threshold: float

    @property
    def kind(self) -> str:
        """`latency`, `errors` or `rps`."""
        if self.metric in ("errors", "rps"):
            return self.metric
        return "latency"

    @property
    def percentile(self) -> float | None:
        """The percentile (0-100) a `p<q>` objective is about, else None."""
        return float(self.metric[1:]) if self.metric.startswith("p") else None

    def holds(self, observed: float) -> bool:
        """Whether an observed value meets the objective; no data never does."""
        if math.isnan(observed):
            return False
        return _COMPARISONS[self.comparison](observed, self.threshold)

    def format_value(self, value: float) -> str:
        """A value of this objective's metric, in the units people read."""
        if math.isnan(value):
            return "no data"
        if self.kind == "errors":
            return f"{value * 100:.3g} %"
        if self.kind == "rps":
            return f"{value:.1f} req/s"
        return format_milliseconds(value)


@dataclass(frozen=True)
class Verdict:
    """An objective with the value observed for it."""

    objective: Objective
    observed: float

    @property
    def passed(self) -> bool:
        return self.objective.holds(self.observed)


def _metric_name(raw: str, text: str) -> str:
    name = _METRIC_ALIASES.get(raw, raw)
    if name in ("mean", "max", "errors", "rps"):
        return name
    match = re.fullmatch(r"p([0-9]+(?:\.[0-9]+)?)", name)
    if match is None:
        raise SloSyntaxError(
            f"{text!r}: unknown metric {raw!r} (use p50, p99, p99.9, mean, max, "
            "errors or rps)"
        )
    digits = match.group(1)
    value = float(digits)
    if "." not in digits and value > 100 and digits.startswith("99"):
        # p999 and p9999 are the usual spellings of the 99.9th and 99.99th.
        value = float(f"99.{digits[2:]}")
    if not 0 < value <= 100:
        raise SloSyntaxError(f"{text!r}: percentile {digits} is not in (0, 100]")
    return f"p{value:g}"


def _parse_objective(text: str) -> Objective:
    compact = re.sub(r"\s+", "", text).lower()
    match = _OBJECTIVE.match(compact)
    if match is None:
        raise SloSyntaxError(
            f"{text!r}: expected <metric><comparison><number>[unit], "
            "for example p99<50ms or errors<0.1%"
        )
    metric = _metric_name(match.group("metric"), text)
    number = float(match.group("number"))
    unit = match.group("unit")
    if metric == "errors":
        if unit not in ("", "%"):
            raise SloSyntaxError(f"{text!r}: errors take % or a fraction, not {unit!r}")
        threshold = number / 100 if unit == "%" else number
    elif metric == "rps":
        if unit not in ("", "/s", "rps"):
            raise SloSyntaxError(f"{text!r}: rps takes no unit or /s, not {unit!r}")
        threshold = number
    else:
        if unit not in _LATENCY_UNITS_MS:
            raise SloSyntaxError(
                f"{text!r}: latency units are ms, s or us, not {unit!r}"
            )
        threshold = number * _LATENCY_UNITS_MS[unit]
    return Objective(
        text=text.strip(),
        metric=metric,
        comparison=match.group("comparison"),
        threshold=threshold,
    )


def parse_slo(text: str) -> list[Objective]:
    """Parse a comma-separated list of objectives.

    Raises:
        SloSyntaxError: an objective does not follow the grammar, or none is given.
    """
    parts = [part for part in text.split(",") if part.strip()]
    if not parts:
        raise SloSyntaxError("empty SLO: give at least one objective, e.g. p99<50ms")
    return [_parse_objective(part) for part in parts]


def evaluate(
    objectives: Iterable[Objective], observe: Callable[[Objective], float]
) -> list[Verdict]:
    """Pair each objective with what `observe` measured for it (NaN: no data)."""
    return [Verdict(objective, observe(objective)) for objective in objectives]


def breached(verdicts: Sequence[Verdict]) -> bool:
    """Whether any objective failed."""
    return not all(verdict.passed for verdict in verdicts)
