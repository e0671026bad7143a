"""The batch benchmark's Markdown table (``python -m benchmarks.batchjob``)."""

from __future__ import annotations

from typing import Any


def print_table(results: list[dict[str, Any]]) -> None:
    """The rows as a Markdown table (``-``: not measured)."""
    print(
        "| model | input | output | runtime limit (rows/s): used (default; 1 "
        "thread) | in process, 1 worker (rows/s) | ratio | in process, N workers "
        "(rows/s) | ratio | floor, N processes (rows/s) | ratio | floor by CPU on "
        "all cores | --target (rows/s) | CPU µs a row: limit (1 thread); 1; N; floor |"
    )
    print("| --- | --- | --- |" + " ---: |" * 10)
    for row in results:
        single = row["limit_one_thread_rows_per_s"]
        limits = (
            f"{row['limit_rows_per_s']:,.0f} "
            f"({row['limit_default_threads_rows_per_s']:,.0f}; "
            + (f"{single:,.0f})" if single else "-)")
        )
        floor = row["floor_rows_per_s"]
        single_cpu = row["limit_one_thread_cpu_us"]
        cpu = [
            f"{row['limit_cpu_us']:.2f}"
            + (f" ({single_cpu:.2f})" if single_cpu is not None else ""),
            f"{row['job_cpu_us']:.2f}",
            f"{row['workers_cpu_us']:.2f}",
            f"{row['floor_cpu_us']:.2f}" if floor else "-",
        ]
        print(
            f"| {row['model']} | {row['format']} | {row['output_format']} | "
            f"{limits} | {row['in_process_rows_per_s']:,.0f} | {row['ratio']:.0%} | "
            f"{row['workers_rows_per_s']:,.0f} ({row['workers']}) | "
            f"{row['workers_ratio']:.0%} | "
            + (
                f"{floor:,.0f} | {row['floor_ratio']:.0%} | "
                f"{row['floor_cpu_bound']:.0%} ({row['cores']}) | "
                if floor
                else "- | - | - | "
            )
            + (f"{row['target_rows_per_s']:,.0f}" if row["target_rows_per_s"] else "-")
            + f" | {'; '.join(cpu)} |"
        )
