"""Two model servers on the same models for parity tests: one with the default
thresholds, where large messages, bodies and answers go to the workers, and one
that does that work on its event loop, as before the thresholds existed. Their
answers must be the same bytes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.security.stack import assert_no_traceback
from tests.support.modelserver import ModelServer, model_server

IN_PLACE_FLAGS = (
    "--grpc_parse_offload_bytes=0",
    f"--rest_api_json_offload_bytes={2**62}",
    f"--rest_api_json_answer_offload_elements={2**62}",
)
"""Every gRPC message parsed, REST body read and answer written on the loop."""


@dataclass(frozen=True)
class Servers:
    offloading: ModelServer
    """Default thresholds: large work goes to the workers."""
    in_place: ModelServer
    """The large work done on the event loop (``IN_PLACE_FLAGS`` or the
    caller's own)."""


@contextlib.contextmanager
def offloading_and_in_place(
    common: Sequence[str], folder: Path, in_place: Sequence[str] = IN_PLACE_FLAGS
) -> Iterator[Servers]:
    """Both servers started with ``common`` flags, logging into ``folder``; at
    the end, neither logged a traceback and the offloading one never fell back
    to the worker pipe (its segments had room)."""
    with (
        model_server(common, log_path=folder / "offloading.log") as offloading,
        model_server(
            (*common, *in_place), log_path=folder / "in-place.log"
        ) as in_place_server,
    ):
        yield Servers(offloading, in_place_server)
        assert_no_traceback(offloading.process)
        assert_no_traceback(in_place_server.process)
        # Every road without room warns so (the servers have room).
        assert "segment could not be written" not in offloading.process.log_text()
