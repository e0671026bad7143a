"""What every command shares: one-line errors on stderr, tables and JSON on stdout."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


class CommandError(Exception):
    """A failure to report in one line, with a non-zero exit code."""


def fail(message: str, code: int = 1) -> int:
    """Print `servekit: error: <message>` on stderr and return the exit code."""
    sys.stderr.write(f"servekit: error: {message}\n")
    return code


def print_json(data: Any) -> None:
    """Write machine-readable output for scripts (`--json`)."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def print_table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """Write a table for people."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if cell is None else str(cell) for cell in row))
    Console().print(table)


def default_registry() -> str:
    """The registry folder: `$SERVEKIT_REGISTRY` if set, else `models/`."""
    return os.environ.get("SERVEKIT_REGISTRY", "models")


def add_registry_argument(parser: argparse.ArgumentParser) -> None:
    """Give a command the shared `--registry PATH` option."""
    parser.add_argument(
        "--registry",
        type=Path,
        default=None,
        help="registry folder (default: $SERVEKIT_REGISTRY or models/)",
    )


def registry_path(args: argparse.Namespace) -> Path:
    """The registry folder chosen on the command line or by the environment."""
    chosen: Path | None = args.registry
    return chosen if chosen is not None else Path(default_registry())


def version_argument(text: str) -> int:
    """argparse type for a version number (a positive integer)."""
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(
            f"invalid version {text!r}: versions are positive integers"
        )
    return int(text)
