"""The in-process processes whose blocks take turns with the servers'."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.reference import ReferenceFailed, References
from tests.support.models import publish_linear_pipeline

pytestmark = pytest.mark.integration


def test_each_block_times_the_model_calls_it_made(tmp_path: Path) -> None:
    # The pipeline's first step sleeps 5 ms, so every batch-1 call takes longer.
    publish_linear_pipeline(tmp_path, "slow", sleep_seconds=0.005)
    references = References(tmp_path, ["slow"], None, processes=2)
    try:
        assert references.processes("slow") == [1, 2]
        first = references.block("slow", 0.05, process_index=1)
        second = references.block("slow", 0.05, process_index=2)
    finally:
        references.close()
    for block in (first, second):
        # Every timed call is one of the model's: none is shorter than its sleep.
        assert block
        assert all(latency >= 5_000_000 for latency in block)
        # A call starts only while the block's 50 ms last, so all but the last
        # ended within them: at most 10 such calls, 11 in all. No lower count or
        # upper latency is asserted: a loaded core may stretch one call past 50 ms.
        assert sum(block[:-1]) <= 50_000_000
        assert len(block) <= 11
    assert references.processes("slow") == []
    with pytest.raises(OSError, match="no in-process reference 1 of 'slow'"):
        references.block("slow", 0.05)


def test_a_model_that_cannot_load_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(ReferenceFailed, match="'missing'.*exited"):
        References(tmp_path, ["missing"], None)
