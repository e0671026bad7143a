"""`servekit serve`: the embedded default (model server + gateway) behind `make up`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from servekit.console import CommandError, add_registry_argument, registry_path


def register(subparsers: Any) -> None:
    """Add `serve`."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="serve every model in the registry: model server + gateway, until Ctrl-C",
        description=(
            "Start servekit-model-server on every model in the registry and the "
            "gateway in front of it, wait until both are ready, print the URLs and "
            "a sample request. Publishing, labels, promote and rollback are followed "
            "live. Ctrl-C or SIGTERM stops both cleanly."
        ),
    )
    add_registry_argument(parser)
    parser.add_argument(
        "--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=int, default=8000, help="gateway HTTP port (default: 8000)"
    )
    parser.add_argument(
        "--grpc-port", type=int, default=8001, help="gateway gRPC port (default: 8001)"
    )
    parser.add_argument(
        "--model-server-port",
        type=int,
        default=8500,
        help="model server gRPC port (default: 8500)",
    )
    parser.add_argument(
        "--model-server-rest-port",
        type=int,
        default=8501,
        help="model server REST port (default: 8501)",
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=180.0,
        help="seconds to wait for every model to load (default: 180)",
    )
    parser.add_argument(
        "--log-dir",
        type=Path,
        default=None,
        help="where the two processes' JSON logs go (default: a temporary folder)",
    )
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    # Imported here: `servekit --help` should not pay for it.
    from servekit.serve import ServeError, ServeOptions, serve

    options = ServeOptions(
        registry=registry_path(args),
        host=args.host,
        port=args.port,
        grpc_port=args.grpc_port,
        model_server_port=args.model_server_port,
        model_server_rest_port=args.model_server_rest_port,
        ready_timeout=args.ready_timeout,
        log_dir=args.log_dir,
    )
    try:
        return serve(options)
    except ServeError as exc:
        raise CommandError(str(exc)) from exc
