"""PNG plots of a run and of two runs side by side.

Figures are built with matplotlib's object API, never pyplot: no global figure
state and no GUI backend; `Figure.savefig` renders with Agg.

Time series are per second of the run, from the per-request log (bucketed by the
second each request finished in); the user count comes from Locust's CSV stats
history.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.axes import Axes
from matplotlib.figure import Figure

LATENCY_PNG = "latency.png"
THROUGHPUT_PNG = "throughput.png"
HISTOGRAM_PNG = "histogram.png"
TIMELINE_PERCENTILES = (50, 90, 99)
COLORS = {50: "#1f77b4", 90: "#ff7f0e", 99: "#d62728"}
RUN_COLORS = ("#1f77b4", "#d62728")
DPI = 110


def run_origin(requests: pd.DataFrame) -> float:
    """Second zero of a run's plots: the whole second its first request started in.

    Whole seconds line the buckets up with Locust's history, whose timestamps are
    whole seconds too.
    """
    return float(np.floor(requests["start"].min())) if not requests.empty else 0.0


def timeline(requests: pd.DataFrame) -> pd.DataFrame:
    """Per second of the run: request and failure rates, latency percentiles (ms).

    Rates divide by the part of each second the run covered, so the first and last
    (partial) seconds are not shown as drops in throughput; a second covered for
    less than a quarter is left out of the rates.
    """
    columns = ["second", "requests", "failures", "rps", "failures_per_second"]
    if requests.empty:
        return pd.DataFrame(
            columns=[*columns, *(f"p{q}" for q in TIMELINE_PERCENTILES)]
        )
    origin = run_origin(requests)
    second = np.floor(requests["end"] - origin).astype(int)
    grouped = requests.assign(second=second).groupby("second")
    frame = pd.DataFrame(
        {
            "requests": grouped.size(),
            "failures": grouped["success"].apply(lambda ok: int((~ok).sum())),
            **{
                f"p{q}": grouped["response_time_ms"].quantile(q / 100)
                for q in TIMELINE_PERCENTILES
            },
        }
    )
    full = pd.RangeIndex(0, int(frame.index.max()) + 1, name="second")
    frame = frame.reindex(full)
    frame[["requests", "failures"]] = frame[["requests", "failures"]].fillna(0)
    first = float(requests["start"].min()) - origin
    last = float(requests["end"].max()) - origin
    starts = full.to_numpy(dtype=float)
    covered = np.minimum(starts + 1, last) - np.maximum(starts, first)
    covered = np.where(covered >= 0.25, covered, np.nan)
    frame["rps"] = frame["requests"] / covered
    frame["failures_per_second"] = frame["failures"] / covered
    return frame.reset_index()


def user_counts(history_csv: Path, origin: float) -> pd.DataFrame | None:
    """Seconds since `origin` and the user count, from Locust's stats history."""
    try:
        history = pd.read_csv(history_csv)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return None
    rows = history[history["Name"] == "Aggregated"]
    if rows.empty:
        return None
    return pd.DataFrame(
        {
            "second": rows["Timestamp"].astype(float) - origin,
            "users": rows["User Count"],
        }
    )


def _users_axis(axes: Axes, users: pd.DataFrame | None, until: float) -> None:
    if users is None:
        return
    twin = axes.twinx()
    # Hold the last count to the end of the data: the history stops a little early.
    seconds = [*users["second"], max(until, float(users["second"].max()))]
    counts = [*users["users"], int(users["users"].iloc[-1])]
    twin.step(
        seconds,
        counts,
        where="post",
        color="grey",
        alpha=0.6,
        linestyle="--",
        label="users",
    )
    twin.set_ylabel("users")
    twin.set_ylim(0, max(1, max(counts)) * 1.15)
    twin.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    twin.legend(loc="upper right", fontsize="small")


def _readable_log_axis(axis: Any) -> None:
    """Label a log axis 1, 2, 5, 10, 20, ... instead of powers of ten only."""
    axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def _finish(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    return path


def _latency_scale(axes: Axes, values: np.ndarray) -> None:
    finite = values[np.isfinite(values) & (values > 0)]
    if finite.size and finite.max() / max(finite.min(), 1e-9) > 30:
        axes.set_yscale("log")
        _readable_log_axis(axes.yaxis)


def plot_latency(
    per_second: pd.DataFrame, users: pd.DataFrame | None, title: str, path: Path
) -> Path:
    """Latency percentiles over time, users on a second axis."""
    figure = Figure(figsize=(9, 4.5))
    axes = figure.subplots()
    for q in TIMELINE_PERCENTILES:
        axes.plot(
            per_second["second"] + 0.5,
            per_second[f"p{q}"],
            color=COLORS[q],
            marker=".",
            label=f"p{q}",
        )
    _latency_scale(
        axes, per_second[[f"p{q}" for q in TIMELINE_PERCENTILES]].to_numpy(dtype=float)
    )
    axes.set_xlabel("seconds since start")
    axes.set_ylabel("latency (ms)")
    axes.set_title(f"{title}: latency percentiles per second")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", fontsize="small")
    _users_axis(axes, users, float(per_second["second"].max() + 1))
    return _finish(figure, path)


def plot_throughput(
    per_second: pd.DataFrame, users: pd.DataFrame | None, title: str, path: Path
) -> Path:
    """Answered requests and failures per second, users on a second axis."""
    figure = Figure(figsize=(9, 4.5))
    axes = figure.subplots()
    successes = per_second["rps"] - per_second["failures_per_second"]
    axes.plot(
        per_second["second"] + 0.5,
        successes,
        color="#2ca02c",
        marker=".",
        label="successes/s",
    )
    axes.bar(
        per_second["second"] + 0.5,
        per_second["failures_per_second"],
        color="#d62728",
        alpha=0.8,
        width=0.8,
        label="failures/s",
    )
    axes.set_ylim(bottom=0)
    axes.set_xlabel("seconds since start")
    axes.set_ylabel("requests per second")
    axes.set_title(f"{title}: throughput and errors")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", fontsize="small")
    _users_axis(axes, users, float(per_second["second"].max() + 1))
    return _finish(figure, path)


def _bins(latencies: np.ndarray) -> tuple[Any, bool]:
    low, high = float(latencies.min()), float(latencies.max())
    if low > 0 and high / low > 20:
        return np.geomspace(low, high, 60), True
    return 60, False


def plot_histogram(latencies: np.ndarray, title: str, path: Path) -> Path:
    """How latencies are distributed, with p50, p90 and p99 marked."""
    figure = Figure(figsize=(9, 4.5))
    axes = figure.subplots()
    if latencies.size:
        bins, logarithmic = _bins(latencies)
        axes.hist(latencies, bins=bins, color="#1f77b4", alpha=0.8)
        if logarithmic:
            axes.set_xscale("log")
            _readable_log_axis(axes.xaxis)
        for q in TIMELINE_PERCENTILES:
            value = float(np.percentile(latencies, q))
            axes.axvline(
                value, color=COLORS[q], linestyle="--", label=f"p{q} {value:.2f} ms"
            )
        axes.legend(fontsize="small")
    axes.set_xlabel("latency (ms)")
    axes.set_ylabel("requests")
    axes.set_title(f"{title}: latency distribution ({latencies.size} requests)")
    axes.grid(alpha=0.3)
    return _finish(figure, path)


def plot_run(
    requests: pd.DataFrame, history_csv: Path, title: str, out_dir: Path
) -> list[Path]:
    """The three PNGs of a run, written into `out_dir`."""
    per_second = timeline(requests)
    users = user_counts(history_csv, run_origin(requests))
    latencies = requests["response_time_ms"].to_numpy(dtype=float)
    return [
        plot_latency(per_second, users, title, out_dir / LATENCY_PNG),
        plot_throughput(per_second, users, title, out_dir / THROUGHPUT_PNG),
        plot_histogram(latencies, title, out_dir / HISTOGRAM_PNG),
    ]


def plot_comparison(runs: list[tuple[str, pd.DataFrame]], path: Path) -> Path:
    """Both runs on one figure: p50/p99 over time, throughput, latency CDF."""
    figure = Figure(figsize=(9, 11))
    latency_axes, throughput_axes, cdf_axes = figure.subplots(3, 1)
    all_percentiles: list[np.ndarray] = []
    for (label, requests), color in zip(runs, RUN_COLORS, strict=False):
        per_second = timeline(requests)
        latency_axes.plot(
            per_second["second"] + 0.5,
            per_second["p99"],
            color=color,
            label=f"{label} p99",
        )
        latency_axes.plot(
            per_second["second"] + 0.5,
            per_second["p50"],
            color=color,
            linestyle="--",
            label=f"{label} p50",
        )
        all_percentiles.append(per_second[["p50", "p99"]].to_numpy(dtype=float))
        throughput_axes.plot(
            per_second["second"] + 0.5,
            per_second["rps"] - per_second["failures_per_second"],
            color=color,
            label=f"{label} successes/s",
        )
        if per_second["failures"].any():
            throughput_axes.plot(
                per_second["second"] + 0.5,
                per_second["failures_per_second"],
                color=color,
                linestyle=":",
                label=f"{label} failures/s",
            )
        latencies = np.sort(requests["response_time_ms"].to_numpy(dtype=float))
        if latencies.size:
            cdf = np.arange(1, latencies.size + 1) / latencies.size
            cdf_axes.plot(latencies, cdf * 100, color=color, label=label)
    if all_percentiles:
        _latency_scale(
            latency_axes, np.concatenate([a.ravel() for a in all_percentiles])
        )
    latency_axes.set_title("latency percentiles per second")
    latency_axes.set_xlabel("seconds since start")
    latency_axes.set_ylabel("latency (ms)")
    throughput_axes.set_title("throughput")
    throughput_axes.set_xlabel("seconds since start")
    throughput_axes.set_ylabel("requests per second")
    throughput_axes.set_ylim(bottom=0)
    cdf_axes.set_title("latency distribution (cumulative)")
    cdf_axes.set_xlabel("latency (ms)")
    cdf_axes.set_ylabel("% of requests at most this slow")
    cdf_axes.set_xscale("log")
    _readable_log_axis(cdf_axes.xaxis)
    for axes in (latency_axes, throughput_axes, cdf_axes):
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    figure.suptitle(" vs ".join(label for label, _ in runs))
    return _finish(figure, path)
