"""`servekit loadtest`: load-test a served model with Locust, gate on an SLO, report.

    servekit loadtest --target http://127.0.0.1:8000 --model tabular --protocol rest \
        --users 10 --spawn-rate 5 --duration 60s --slo "p99<50ms,errors<0.1%"
    servekit loadtest compare RUN_A RUN_B
"""

from __future__ import annotations

import argparse
import importlib
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from servekit.console import (
    CommandError,
    add_registry_argument,
    print_json,
    registry_path,
    version_argument,
)
from servekit.loadtest.plan import (
    PROTOCOLS,
    SHAPES,
    PlanError,
    RunPlan,
    find_locustfile,
    locust_host,
    parse_duration,
)

DEFAULT_RESULTS = Path("loadtest-results")


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: a positive integer")
    return int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid rate {text!r}") from exc
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid rate {text!r}: must be positive")
    return value


def register(subparsers: Any) -> None:
    """Add `loadtest` (run) and `loadtest compare`."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "loadtest",
        help="load-test a served model with Locust (SLO gate, report, plots)",
        description=(
            "Run Locust headless against a model server or the gateway, write a "
            "results folder (Locust CSVs and HTML, summary.json, report.html, PNG "
            "plots) and exit non-zero when the SLO is breached. "
            "`servekit loadtest compare RUN_A RUN_B` compares two results folders."
        ),
    )
    parser.add_argument("--target", help="server URL, or host:port (gRPC)")
    parser.add_argument("--model", help="model name")
    pinned = parser.add_mutually_exclusive_group()
    pinned.add_argument("--version", type=version_argument, help="send to one version")
    pinned.add_argument("--label", help="send to a version label (stable, canary)")
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="rest",
        help="rest: TF Serving v1; v2: Open Inference Protocol; typed: the gateway's "
        "typed endpoint; grpc: PredictionService (default: rest)",
    )
    parser.add_argument(
        "--users", type=_positive_int, default=10, help="concurrent users (default 10)"
    )
    parser.add_argument(
        "--spawn-rate",
        type=_positive_float,
        default=None,
        help="users started per second (default: all within a second)",
    )
    parser.add_argument(
        "--ready-timeout",
        type=_positive_float,
        default=300.0,
        help="seconds to wait for the target to be ready before the first "
        "request (default 300)",
    )
    parser.add_argument(
        "--duration", default="60s", help="run time: 30s, 2m, 1h30m (default 60s)"
    )
    parser.add_argument(
        "--shape",
        choices=SHAPES,
        default="constant",
        help="load shape (default constant)",
    )
    parser.add_argument(
        "--slo", help='objectives, e.g. "p99<50ms,errors<0.1%%"; breach: exit 1'
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=1,
        help="rows per request (default 1)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="results folder (default loadtest-results/<model>-<protocol>-<time>)",
    )
    parser.add_argument(
        "--locustfile",
        type=Path,
        help="locustfile (default: tests/load/locustfile.py of the checkout)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print summary.json instead of tables"
    )
    add_registry_argument(parser)
    parser.set_defaults(handler=_run, parser=parser)

    actions = parser.add_subparsers(
        dest="loadtest_command", title="other actions", metavar="ACTION"
    )
    compare_parser = actions.add_parser("compare", help="compare two results folders")
    compare_parser.add_argument("run_a", type=Path, metavar="RUN_A")
    compare_parser.add_argument("run_b", type=Path, metavar="RUN_B")
    compare_parser.add_argument(
        "--out", type=Path, help="comparison plot (default RUN_B/compare.png)"
    )
    compare_parser.add_argument(
        "--json", action="store_true", help="print the deltas as JSON"
    )
    compare_parser.set_defaults(handler=_compare)


def _default_out(model: str, protocol: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return DEFAULT_RESULTS / f"{model}-{protocol}-{stamp}"


def _write_manifest(args: argparse.Namespace, out_dir: Path) -> tuple[Path | None, str]:
    """Copy the model's manifest into the results folder; None: use server metadata."""
    from modelregistry import (
        ManifestError,
        ModelNotFound,
        Registry,
        RegistryError,
        VersionNotFound,
    )

    explicit = args.registry is not None
    root = registry_path(args)
    if not root.is_dir():
        if explicit:
            raise CommandError(f"registry {root} does not exist")
        return None, "server metadata"
    registry = Registry(root)
    try:
        version = registry.resolve(args.model, args.version, args.label)
        manifest = registry.manifest(args.model, version)
    except (ModelNotFound, VersionNotFound, ManifestError) as exc:
        if explicit:
            raise CommandError(str(exc)) from exc
        return None, "server metadata"
    except RegistryError as exc:
        raise CommandError(str(exc)) from exc
    path = out_dir / "manifest.json"
    path.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return path, f"manifest of {args.model} version {version} in {root}"


def _plan(args: argparse.Namespace) -> tuple[RunPlan, str]:
    missing = [
        flag
        for flag, value in (("--target", args.target), ("--model", args.model))
        if not value
    ]
    if missing:
        args.parser.error(f"the following arguments are required: {', '.join(missing)}")
    if args.protocol == "typed" and args.label is not None:
        raise CommandError("typed endpoints take no label; use --version")
    locustfile = args.locustfile or find_locustfile(Path.cwd())
    if locustfile is None or not locustfile.is_file():
        raise CommandError(
            "no locustfile: run from a servekit checkout or pass --locustfile tests/load/locustfile.py"
        )
    try:
        duration = parse_duration(args.duration)
        host = locust_host(args.target, args.protocol)
    except PlanError as exc:
        raise CommandError(str(exc)) from exc
    out_dir: Path = args.out or _default_out(args.model, args.protocol)
    if (out_dir / "summary.json").exists():
        raise CommandError(f"{out_dir} already holds results; choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest, source = _write_manifest(args, out_dir)
    plan = RunPlan(
        target=args.target,
        host=host,
        model=args.model,
        protocol=args.protocol,
        users=args.users,
        spawn_rate=args.spawn_rate or float(args.users),
        duration_seconds=duration,
        shape=args.shape,
        out_dir=out_dir.resolve(),
        locustfile=locustfile.resolve(),
        version=args.version,
        label=args.label,
        batch_size=args.batch_size,
        slo=args.slo,
        manifest=manifest.resolve() if manifest is not None else None,
    )
    return plan, source


def _import_reporting() -> None:
    importlib.import_module("servekit.loadtest.plots")
    importlib.import_module("servekit.loadtest.report")


def _wait_for_readiness(plan: RunPlan, timeout: float, console: Console) -> None:
    """No request before the target is ready: a model still loading would
    answer 404 and count as an error of the run."""
    from servekit.loadtest.readiness import (
        NotReady,
        grpc_ready,
        http_ready,
        wait_until_ready,
    )

    check = (
        grpc_ready(plan.host, plan.model)
        if plan.protocol == "grpc"
        else http_ready(plan.host, plan.model)
    )
    with console.status(f"waiting for {plan.host} to be ready...") as status:
        try:
            waited = wait_until_ready(
                check,
                timeout,
                lambda seconds: status.update(
                    f"waiting for {plan.host} to be ready ({seconds:.0f} s)..."
                ),
            )
        except NotReady as exc:
            raise CommandError(f"{plan.host}: {exc} (--ready-timeout)") from exc
    if waited > 1.0:
        console.print(f"{plan.host} ready after {waited:.1f} s")


def _run(args: argparse.Namespace) -> int:
    from servekit.loadtest.progress import ProgressPrinter
    from servekit.loadtest.runner import (
        RunnerError,
        log_tail,
        missing_packages,
        run_locust,
    )
    from servekit.loadtest.slo import SloSyntaxError, breached, parse_slo

    missing = missing_packages()
    if missing:
        raise CommandError(
            f"{', '.join(missing)} not installed: pip install 'servekit[loadtest]'"
        )

    try:
        objectives = parse_slo(args.slo) if args.slo else []
    except SloSyntaxError as exc:
        raise CommandError(f"--slo: {exc}") from exc
    plan, source = _plan(args)
    console = Console(stderr=True)
    console.print(
        f"load-testing [bold]{plan.model}[/bold] over {plan.protocol} at {plan.host}: "
        f"{plan.users} users (+{plan.spawn_rate:g}/s), {plan.duration_seconds}s, shape {plan.shape}, "
        f"batch {plan.batch_size}; payloads from {source}; results in {plan.out_dir}",
        highlight=False,
    )
    _wait_for_readiness(plan, args.ready_timeout, console)
    printer = ProgressPrinter(plan.duration_seconds)
    # pandas and matplotlib take seconds to import (and the other commands never
    # need them): import them while Locust starts up in its own process.
    importer = threading.Thread(target=_import_reporting, daemon=True)
    importer.start()
    try:
        run = run_locust(plan, printer.show)
    except RunnerError as exc:
        raise CommandError(f"{exc}\n{log_tail(plan)}") from exc
    printer.finish(run.final_progress)
    importer.join()
    from servekit.loadtest.plots import plot_run
    from servekit.loadtest.report import (
        ReportError,
        judge,
        locust_totals,
        print_report,
        read_requests,
        report_console,
        slo_section,
        summarize,
        write_html,
        write_summary,
    )

    try:
        requests = read_requests(plan.request_log)
    except ReportError as exc:
        raise CommandError(
            f"locust exited with {run.exit_code} and no results: {exc}\n{log_tail(plan)}"
        ) from exc
    if requests.empty:
        raise CommandError(
            f"locust exited with {run.exit_code} without sending a request:\n{log_tail(plan)}"
        )
    run_info: dict[str, Any] = {
        "target": plan.target,
        "host": plan.host,
        "model": plan.model,
        "version": plan.version,
        "label": plan.label,
        "protocol": plan.protocol,
        "users": plan.users,
        "spawn_rate": plan.spawn_rate,
        "duration_seconds": plan.duration_seconds,
        "shape": plan.shape,
        "batch_size": plan.batch_size,
        "payloads": source,
        "started": datetime.fromtimestamp(run.started, UTC).isoformat(
            timespec="seconds"
        ),
        "finished": datetime.fromtimestamp(run.finished, UTC).isoformat(
            timespec="seconds"
        ),
        "locust_exit_code": run.exit_code,
    }
    summary = summarize(requests, run_info, locust_totals(plan.stats_csv))
    verdicts = judge(requests, objectives)
    if objectives:
        summary["slo"] = slo_section(args.slo, verdicts)
    title = f"{plan.model} {plan.protocol} {plan.users} users"
    plots = plot_run(requests, plan.history_csv, title, plan.out_dir)
    write_summary(summary, plan.out_dir)
    report = write_html(summary, plots, plan.out_dir)
    if args.json:
        print_json(summary)
    else:
        print_report(summary)
        report_console().print(f"report: {report}", highlight=False)
    if run.exit_code not in (0, 1):
        raise CommandError(f"locust exited with {run.exit_code}:\n{log_tail(plan)}")
    if objectives and breached(verdicts):
        return 1
    # Unless the SLO budgets for errors, any failed request fails the run, as in
    # Locust itself: a fast stream of 503s must not pass a latency-only SLO.
    budgets_errors = any(objective.kind == "errors" for objective in objectives)
    return 1 if summary["totals"]["failures"] and not budgets_errors else 0


def _compare(args: argparse.Namespace) -> int:
    from servekit.loadtest.compare import compare
    from servekit.loadtest.report import ReportError

    plot_path: Path = args.out or args.run_b / "compare.png"
    try:
        result = compare(
            args.run_a, args.run_b, plot_path, console=Console(stderr=args.json)
        )
    except ReportError as exc:
        raise CommandError(str(exc)) from exc
    if args.json:
        print_json(result)
    return 0
