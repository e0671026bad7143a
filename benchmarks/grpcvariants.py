"""The model server with another gRPC server in its place, for reference rows.

``before`` runs the hand-written HTTP/2 server that servekit had until commit
:data:`BEFORE_COMMIT` (its module is written from git into the work folder, so
the comparison runs in the same bench run as today's server); ``aio`` runs
grpcio's C core (``grpc.aio.server``, on the standard asyncio loop, since grpc.aio
does not support uvloop). Everything else in the process is today's model
server, so the rows differ only in the gRPC server.

Run as ``python -m benchmarks.grpcvariants --module-dir DIR {before,aio}
MODEL-SERVER-FLAGS...``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.settings import REPO_ROOT

BEFORE_COMMIT = "7f75b63"
"""The last commit with the hand-written HTTP/2 server."""
BEFORE_MODULE = "handwritten_grpc_server"
_BEFORE_PATH = "services/protocol/src/servekit_protocol/grpc_server.py"
VARIANTS = ("before", "aio")


def write_before_module(directory: Path) -> Path:
    """Write the hand-written server's module (from git) into ``directory``.

    Raises:
        subprocess.CalledProcessError: The commit is not in this clone.
    """
    source = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "show", f"{BEFORE_COMMIT}:{_BEFORE_PATH}"],
        check=True,
        capture_output=True,
    ).stdout
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{BEFORE_MODULE}.py"
    path.write_bytes(source)
    return path


def _before_factory(directory: Path) -> Any:
    sys.path.insert(0, str(directory))
    module = importlib.import_module(BEFORE_MODULE)

    def build(*, max_receive_bytes: int, max_send_bytes: int, **_: Any) -> Any:
        return module.GrpcServer(
            max_receive_bytes=max_receive_bytes, max_send_bytes=max_send_bytes
        )

    return build


def _aio_factory() -> Any:
    import grpc

    def build(*, max_receive_bytes: int, max_send_bytes: int, **_: Any) -> Any:
        return grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_receive_bytes),
                ("grpc.max_send_message_length", max_send_bytes),
                ("grpc.so_reuseport", 0),
            ]
        )

    return build


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.grpcvariants")
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("--module-dir", type=Path, required=True)
    parser.add_argument("flags", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    from modelserver.protocol.grpc import server as grpc_server

    if args.variant == "before":
        factory = _before_factory(args.module_dir)
    else:
        import uvloop

        factory = _aio_factory()
        # grpc.aio polls its C core from the standard asyncio loop only.
        setattr(uvloop, "run", asyncio.run)  # noqa: B010
    # The model server builds its gRPC server through this name.
    setattr(grpc_server, "Http2GrpcServer", factory)  # noqa: B010
    from modelserver.__main__ import main as model_server

    # Neither server takes a decoder for large messages: every message is
    # parsed in place (the benchmark's messages are small either way).
    return model_server([*args.flags, "--grpc_parse_offload_bytes=0"])


if __name__ == "__main__":
    sys.exit(main())
