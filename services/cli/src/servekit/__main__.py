"""The `servekit` command line: one entry point, one subcommand module per area."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from servekit.console import CommandError, fail

# Each module in servekit.commands exposes register(subparsers); the order is the help order.
COMMAND_MODULES: tuple[str, ...] = (
    "train",
    "models",
    "serve",
    "deploy",
    "loadtest",
    "batch",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="servekit",
        description="Train, publish, serve, deploy and load-test models.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(f"servekit.commands.{module_name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit code is non-zero on failure."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except CommandError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return fail("interrupted", code=130)
    return code


if __name__ == "__main__":
    sys.exit(main())
