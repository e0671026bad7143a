"""`servekit loadtest compare RUN_A RUN_B`: what changed from one run to another."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from servekit.loadtest.plots import plot_comparison
from servekit.loadtest.report import read_requests, read_summary, report_console

NOTABLE_CHANGE = 0.05
"""Relative changes smaller than this are shown without colour: noise on a busy box."""


@dataclass(frozen=True)
class Delta:
    """One metric in both runs."""

    metric: str
    a: float | None
    b: float | None
    higher_is_better: bool
    unit: str

    @property
    def change(self) -> float | None:
        """B minus A."""
        if self.a is None or self.b is None:
            return None
        return self.b - self.a

    @property
    def relative(self) -> float | None:
        """(B - A) / A, or None when A is zero or missing."""
        if self.a is None or self.b is None or self.a == 0:
            return None
        return (self.b - self.a) / abs(self.a)

    @property
    def better(self) -> bool | None:
        """Whether B is notably better (True), worse (False) or about the same (None)."""
        relative = self.relative
        if relative is None or abs(relative) < NOTABLE_CHANGE:
            return None
        return (relative > 0) == self.higher_is_better

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "a": self.a,
            "b": self.b,
            "change": self.change,
            "relative": self.relative,
            "unit": self.unit,
        }


def deltas(summary_a: Mapping[str, Any], summary_b: Mapping[str, Any]) -> list[Delta]:
    """The totals of two summaries, metric by metric."""
    totals_a, totals_b = summary_a["totals"], summary_b["totals"]
    found = [
        Delta("requests", totals_a["requests"], totals_b["requests"], True, ""),
        Delta("req/s", totals_a["rps"], totals_b["rps"], True, "req/s"),
        Delta(
            "error rate",
            totals_a["error_rate"] * 100,
            totals_b["error_rate"] * 100,
            False,
            "%",
        ),
    ]
    for key in ("mean", "p50", "p90", "p95", "p99", "p99.9", "max"):
        found.append(
            Delta(
                f"{key} latency",
                totals_a["latency_ms"].get(key),
                totals_b["latency_ms"].get(key),
                False,
                "ms",
            )
        )
    return found


def _number(value: float | None, unit: str, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    sign = "+" if signed else ""
    if unit == "":
        return f"{value:{sign}.0f}"
    if unit == "req/s":
        return f"{value:{sign}.1f} {unit}"
    return f"{value:{sign}.2f} {unit}"


def comparison_table(label_a: str, label_b: str, rows: list[Delta]) -> Table:
    """A row per metric: A, B, the change and the relative change."""
    table = Table(title=f"A: {label_a}\nB: {label_b}")
    table.add_column("metric", no_wrap=True)
    for column in ("A", "B", "B - A", "relative"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        relative = row.relative
        colour = {True: "green", False: "red", None: ""}[row.better]
        relative_text = "-" if relative is None else f"{relative * 100:+.1f}%"
        if colour:
            relative_text = f"[{colour}]{relative_text}[/{colour}]"
        table.add_row(
            row.metric,
            _number(row.a, row.unit),
            _number(row.b, row.unit),
            _number(row.change, row.unit, signed=True),
            relative_text,
        )
    return table


def run_label(run_dir: Path, summary: Mapping[str, Any]) -> str:
    """A short name for a run: its folder, protocol and users."""
    run = summary.get("run", {})
    return f"{run_dir.name} ({run.get('protocol')}, {run.get('users')} users)"


def compare(
    run_a: Path, run_b: Path, plot_path: Path, console: Console | None = None
) -> dict[str, Any]:
    """Print the deltas, draw both runs on one PNG, and return the comparison.

    Raises:
        ReportError: a folder is not a loadtest results folder.
    """
    summary_a, summary_b = read_summary(run_a), read_summary(run_b)
    label_a, label_b = run_label(run_a, summary_a), run_label(run_b, summary_b)
    rows = deltas(summary_a, summary_b)
    out = console if console is not None else report_console()
    out.print(comparison_table(label_a, label_b, rows))
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    plot_comparison(
        [
            (label_a, read_requests(run_a / "requests.csv")),
            (label_b, read_requests(run_b / "requests.csv")),
        ],
        plot_path,
    )
    out.print(f"plot: {plot_path}")
    return {
        "a": str(run_a),
        "b": str(run_b),
        "deltas": [row.as_dict() for row in rows],
        "plot": str(plot_path),
    }
