"""The results of a run: JSON summary, SLO verdict, table and HTML report.

Numbers come from the per-request log (float milliseconds, see `requestlog`);
Locust's own aggregate counts are kept next to them in the summary as a cross-check.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from servekit.loadtest.requestlog import REQUEST_LOG_COLUMNS
from servekit.loadtest.slo import Objective, Verdict, breached, evaluate

SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"
SUMMARY_SCHEMA = 1
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)
MAX_ERRORS_SHOWN = 5
MAX_ERROR_TEXT = 160


class ReportError(RuntimeError):
    """A results folder lacks what a report needs."""


def read_requests(path: Path) -> pd.DataFrame:
    """The per-request log as a frame, with `end` (Unix seconds) added.

    Raises:
        ReportError: the file is missing or not a request log.
    """
    try:
        frame = pd.read_csv(
            path, keep_default_na=False, dtype={"error": str, "name": str}
        )
    except FileNotFoundError as exc:
        raise ReportError(f"{path}: no request log; did locust run?") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ReportError(f"{path}: unreadable request log: {exc}") from exc
    missing = set(REQUEST_LOG_COLUMNS) - set(frame.columns)
    if missing:
        raise ReportError(f"{path}: not a request log (missing {sorted(missing)})")
    frame["success"] = frame["success"].astype(int).astype(bool)
    frame["end"] = frame["start"] + frame["response_time_ms"] / 1000
    return frame


def percentile_key(percentile: float) -> str:
    """`p50`, `p99`, `p99.9`: the summary's names for percentiles."""
    return f"p{percentile:g}"


def _latency_stats(latencies: np.ndarray) -> dict[str, float | None]:
    if latencies.size == 0:
        return dict.fromkeys(("min", "mean", *map(percentile_key, PERCENTILES), "max"))
    stats: dict[str, float | None] = {
        "min": float(latencies.min()),
        "mean": float(latencies.mean()),
    }
    for percentile in PERCENTILES:
        stats[percentile_key(percentile)] = float(np.percentile(latencies, percentile))
    stats["max"] = float(latencies.max())
    return stats


def _group_stats(frame: pd.DataFrame, batch_size: int) -> dict[str, Any]:
    requests = len(frame)
    failures = int((~frame["success"]).sum())
    span = float(frame["end"].max() - frame["start"].min()) if requests else 0.0
    rps = requests / span if span > 0 else 0.0
    return {
        "requests": requests,
        "failures": failures,
        "error_rate": failures / requests if requests else 0.0,
        "rps": rps,
        "rows_per_second": rps * batch_size,
        "duration_seconds": span,
        "latency_ms": _latency_stats(frame["response_time_ms"].to_numpy(dtype=float)),
    }


def locust_totals(stats_csv: Path) -> dict[str, Any] | None:
    """The Aggregated row of Locust's `_stats.csv`: its own count of the run."""
    try:
        stats = pd.read_csv(stats_csv)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return None
    rows = stats[stats["Name"] == "Aggregated"]
    if rows.empty:
        return None
    row = rows.iloc[0]
    return {
        "requests": int(row["Request Count"]),
        "failures": int(row["Failure Count"]),
        "rps": float(row["Requests/s"]),
        "p50_ms": float(row["50%"]) if row["Request Count"] else None,
        "p99_ms": float(row["99%"]) if row["Request Count"] else None,
    }


def summarize(
    requests: pd.DataFrame,
    run: Mapping[str, Any],
    locust: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The summary of a run (written as `summary.json`)."""
    batch_size = int(run.get("batch_size", 1))
    endpoints = [
        {
            "name": str(name),
            "request_type": str(group["request_type"].iloc[0]),
            **_group_stats(group, batch_size),
        }
        for name, group in requests.groupby("name", sort=True)
    ]
    failed = requests[~requests["success"]]
    counts = (
        failed.groupby(["name", "error"]).size().rename("occurrences").reset_index()
    ).sort_values("occurrences", ascending=False, kind="stable")
    errors = [
        {"name": str(name), "error": str(error), "count": int(occurrences)}
        for name, error, occurrences in zip(
            counts["name"], counts["error"], counts["occurrences"], strict=True
        )
    ]
    return {
        "schema": SUMMARY_SCHEMA,
        "run": dict(run),
        "totals": _group_stats(requests, batch_size),
        "endpoints": endpoints,
        "errors": errors,
        "locust": dict(locust) if locust is not None else None,
    }


def observe(requests: pd.DataFrame, objective: Objective) -> float:
    """The value of an objective's metric over the whole run (NaN: no requests)."""
    if requests.empty:
        return math.nan
    latencies = requests["response_time_ms"].to_numpy(dtype=float)
    if objective.kind == "errors":
        return float((~requests["success"]).mean())
    if objective.kind == "rps":
        span = float(requests["end"].max() - requests["start"].min())
        return len(requests) / span if span > 0 else math.nan
    if objective.metric == "mean":
        return float(latencies.mean())
    if objective.metric == "max":
        return float(latencies.max())
    return float(np.percentile(latencies, objective.percentile or 100.0))


def judge(requests: pd.DataFrame, objectives: Sequence[Objective]) -> list[Verdict]:
    """Evaluate the objectives against a run's requests."""
    return evaluate(objectives, lambda objective: observe(requests, objective))


def slo_section(text: str, verdicts: Sequence[Verdict]) -> dict[str, Any]:
    """The `slo` entry of the summary."""
    return {
        "text": text,
        "passed": not breached(verdicts),
        "objectives": [
            {
                "objective": verdict.objective.text,
                "metric": verdict.objective.metric,
                "comparison": verdict.objective.comparison,
                "threshold": verdict.objective.threshold,
                "observed": None if math.isnan(verdict.observed) else verdict.observed,
                "passed": verdict.passed,
            }
            for verdict in verdicts
        ],
    }


def write_summary(summary: Mapping[str, Any], out_dir: Path) -> Path:
    """Write `summary.json` into the results folder."""
    path = out_dir / SUMMARY_FILE
    path.write_text(
        json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return path


def read_summary(run_dir: Path) -> dict[str, Any]:
    """Read a results folder's `summary.json`.

    Raises:
        ReportError: the folder has no readable summary.
    """
    path = run_dir / SUMMARY_FILE
    try:
        summary: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ReportError(
            f"{run_dir}: no {SUMMARY_FILE}; not a loadtest results folder"
        ) from exc
    except ValueError as exc:
        raise ReportError(f"{path}: not JSON: {exc}") from exc
    return summary


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def results_table(summary: Mapping[str, Any]) -> Table:
    """Endpoints and the total: requests, failures, req/s and latency percentiles."""
    run = summary["run"]
    title = f"{run.get('model')} over {run.get('protocol')} at {run.get('target')}"
    table = Table(title=title)
    for column in (
        "endpoint",
        "requests",
        "failures",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
    ):
        if column == "endpoint":
            table.add_column(column, no_wrap=True)
        else:
            table.add_column(column, justify="right")
    rows = [*summary["endpoints"]]
    if len(rows) != 1:
        rows.append({"name": "total", **summary["totals"]})
    for row in rows:
        latency = row["latency_ms"]
        table.add_row(
            row["name"],
            str(row["requests"]),
            f"{row['failures']} ({row['error_rate'] * 100:.2f}%)",
            f"{row['rps']:.1f}",
            _ms(latency["p50"]),
            _ms(latency["p90"]),
            _ms(latency["p99"]),
            _ms(latency["max"]),
        )
    return table


def slo_table(slo: Mapping[str, Any]) -> Table:
    """One row per objective: threshold, observed value, verdict."""
    table = Table(title=f"SLO {slo['text']}: {'met' if slo['passed'] else 'BREACHED'}")
    for column in ("objective", "observed", "verdict"):
        table.add_column(column)
    for entry in slo["objectives"]:
        objective = Objective(
            entry["objective"], entry["metric"], entry["comparison"], entry["threshold"]
        )
        observed = math.nan if entry["observed"] is None else float(entry["observed"])
        table.add_row(
            entry["objective"],
            objective.format_value(observed),
            "[green]met[/green]"
            if entry["passed"]
            else "[bold red]breached[/bold red]",
        )
    return table


def report_console() -> Console:
    """A console for the tables: 120 columns when not a terminal (logs, CI, pipes),
    where rich would otherwise assume 80 and squeeze the endpoint names."""
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 120)
    return console


def print_report(summary: Mapping[str, Any], console: Console | None = None) -> None:
    """The results table, the SLO table and the errors, for people."""
    out = console if console is not None else report_console()
    out.print(results_table(summary))
    if summary.get("slo"):
        out.print(slo_table(summary["slo"]))
    for error in summary["errors"][:MAX_ERRORS_SHOWN]:
        text = error["error"][:MAX_ERROR_TEXT]
        out.print(
            f"{error['count']} x {error['name']}: {text}", style="red", highlight=False
        )


def _html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_html(
    summary: Mapping[str, Any], plots: Sequence[Path], out_dir: Path
) -> Path:
    """`report.html`: the summary, SLO verdict and plots, linking Locust's own report."""
    run = summary["run"]
    totals = summary["totals"]
    rows = []
    for row in [*summary["endpoints"], {"name": "total", **totals}]:
        latency = row["latency_ms"]
        rows.append(
            (
                row["name"],
                row["requests"],
                f"{row['failures']} ({row['error_rate'] * 100:.2f}%)",
                f"{row['rps']:.1f}",
                *(_ms(latency[key]) for key in ("p50", "p90", "p95", "p99", "max")),
            )
        )
    sections = [
        f"<h1>servekit load test: {html.escape(str(run.get('model')))}</h1>",
        _html_table(
            ("setting", "value"),
            [
                (key, "" if value is None else value)
                for key, value in sorted(run.items())
            ],
        ),
        "<h2>Results</h2>",
        _html_table(
            (
                "endpoint",
                "requests",
                "failures",
                "req/s",
                "p50 ms",
                "p90 ms",
                "p95 ms",
                "p99 ms",
                "max ms",
            ),
            rows,
        ),
    ]
    slo = summary.get("slo")
    if slo:
        verdict = "met" if slo["passed"] else "BREACHED"
        sections.append(f"<h2>SLO {html.escape(slo['text'])}: {verdict}</h2>")
        sections.append(
            _html_table(
                ("objective", "observed", "verdict"),
                [
                    (
                        entry["objective"],
                        "no data"
                        if entry["observed"] is None
                        else f"{entry['observed']:.4g}",
                        "met" if entry["passed"] else "breached",
                    )
                    for entry in slo["objectives"]
                ],
            )
        )
    if summary["errors"]:
        sections.append("<h2>Errors</h2>")
        sections.append(
            _html_table(
                ("endpoint", "error", "count"),
                [(e["name"], e["error"], e["count"]) for e in summary["errors"]],
            )
        )
    sections.append("<h2>Plots</h2>")
    sections.extend(
        f'<p><img src="{html.escape(plot.name)}" alt="{html.escape(plot.stem)}"></p>'
        for plot in plots
    )
    sections.append(
        '<p>Locust\'s own report: <a href="locust.html">locust.html</a></p>'
    )
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    document = (
        '<!DOCTYPE html><html><head><meta charset="utf-8">'
        f"<title>servekit load test {html.escape(str(run.get('model')))}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}</style>"
        f"</head><body>{''.join(sections)}<p><small>generated {generated}</small></p></body></html>\n"
    )
    path = out_dir / REPORT_FILE
    path.write_text(document, encoding="utf-8")
    return path
