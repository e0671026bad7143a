"""Run Locust headless as a subprocess, with a live progress line and a hard deadline.

Locust is never imported here (see the package docstring). The locustfile gets its
settings through `SERVEKIT_*` environment variables, the same ones the compose and
Kubernetes deployments set.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from servekit.loadtest.plan import RunPlan
from servekit.loadtest.progress import Progress, ProgressTracker

POLL_SECONDS = 1.0
STOP_TIMEOUT_SECONDS = 10
"""Users finish the request they are in when the time is up, so none is lost."""
EXIT_GRACE_SECONDS = 60.0
"""Start-up, the stop timeout and report writing fit well within this."""


class RunnerError(RuntimeError):
    """Locust could not be run or did not finish."""


@dataclass(frozen=True)
class LocustRun:
    """How the Locust process ended."""

    exit_code: int
    started: float
    """Unix time the process was started."""
    finished: float
    final_progress: Progress


def locust_command(plan: RunPlan) -> list[str]:
    """The Locust command line for a plan."""
    command = [
        sys.executable,
        "-m",
        "locust",
        "--locustfile",
        str(plan.locustfile),
        "--headless",
        "--host",
        plan.host,
        "--users",
        str(plan.users),
        "--spawn-rate",
        f"{plan.spawn_rate:g}",
        "--run-time",
        f"{plan.duration_seconds}s",
        "--stop-timeout",
        str(STOP_TIMEOUT_SECONDS),
        "--csv",
        str(plan.csv_prefix),
        "--csv-full-history",
        "--html",
        str(plan.locust_html),
        "--only-summary",
        "--loglevel",
        "INFO",
    ]
    if plan.locust_conf.is_file():
        command[3:3] = ["--config", str(plan.locust_conf)]
    return command


def locust_environment(plan: RunPlan) -> dict[str, str]:
    """The `SERVEKIT_*` variables that configure the locustfile for a plan."""
    settings = {
        "SERVEKIT_MODEL": plan.model,
        "SERVEKIT_PROTOCOL": plan.protocol,
        "SERVEKIT_BATCH_SIZE": str(plan.batch_size),
        "SERVEKIT_SHAPE": plan.shape,
        "SERVEKIT_REQUEST_LOG": str(plan.request_log),
        "SERVEKIT_VERSION": "" if plan.version is None else str(plan.version),
        "SERVEKIT_LABEL": plan.label or "",
        "SERVEKIT_MANIFEST": "" if plan.manifest is None else str(plan.manifest),
        # The CLI judges the SLO itself from exact latencies; the registry was
        # already turned into the manifest file above.
        "SERVEKIT_SLO": "",
        "SERVEKIT_REGISTRY": "",
    }
    # Inherited: SERVEKIT_API_KEY, SERVEKIT_TIMEOUT, SERVEKIT_SEED, proxies, PATH.
    return {**os.environ, **settings}


def _stop(process: subprocess.Popen[bytes], sig: int, wait_seconds: float) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=wait_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def missing_packages() -> list[str]:
    """The packages a run needs that are not installed (found without importing)."""
    return [
        name
        for name in ("locust", "pandas", "matplotlib")
        if importlib.util.find_spec(name) is None
    ]


def run_locust(plan: RunPlan, on_progress: Callable[[Progress], None]) -> LocustRun:
    """Run the plan and wait for Locust to exit, reporting progress every second.

    Raises:
        RunnerError: Locust could not start or overran its deadline.
    """
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    tracker = ProgressTracker(plan.request_log, plan.history_csv)
    deadline = (
        time.monotonic()
        + plan.duration_seconds
        + STOP_TIMEOUT_SECONDS
        + EXIT_GRACE_SECONDS
    )
    started = time.time()
    with plan.locust_log.open("wb") as log:
        try:
            process = subprocess.Popen(
                locust_command(plan),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=locust_environment(plan),
                cwd=plan.out_dir,
            )
        except OSError as exc:
            raise RunnerError(f"cannot start locust: {exc}") from exc
        try:
            while process.poll() is None:
                if time.monotonic() > deadline:
                    _stop(process, signal.SIGTERM, 10.0)
                    raise RunnerError(
                        f"locust did not finish within {plan.duration_seconds}s "
                        f"+ {STOP_TIMEOUT_SECONDS + EXIT_GRACE_SECONDS:.0f}s; see {plan.locust_log}"
                    )
                on_progress(tracker.poll())
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            # Ctrl-C reached Locust too (same process group) and it is saving its
            # report; only nudge it if it is still running after a while.
            try:
                process.wait(timeout=15.0)
            except subprocess.TimeoutExpired:
                _stop(process, signal.SIGINT, 10.0)
            raise
    return LocustRun(
        exit_code=process.returncode,
        started=started,
        finished=time.time(),
        final_progress=tracker.poll(),
    )


def log_tail(plan: RunPlan, lines: int = 15) -> str:
    """The end of Locust's output, for error messages."""
    try:
        text = plan.locust_log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
