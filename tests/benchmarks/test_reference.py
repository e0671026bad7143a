"""The in-process reference processes the bench measures around 1-client runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.reference import ReferenceFailed, References
from tests.support.models import publish_linear_pipeline

pytestmark = pytest.mark.integration


def test_reference_measures_the_model_each_time_it_is_asked(tmp_path: Path) -> None:
    # The pipeline's first step sleeps 5 ms, so every batch-1 call takes longer.
    publish_linear_pipeline(tmp_path, "slow", sleep_seconds=0.005)
    lines: list[str] = []
    references = References(tmp_path, ["slow"], 0.3, None, lines.append)
    try:
        first = references.measure("slow")
        second = references.measure("slow")
    finally:
        references.close()
    assert first is not None and second is not None
    assert 5.0 <= first < 50.0
    assert 5.0 <= second < 50.0
    assert references.measure("slow") is None
    assert lines == []


def test_a_model_that_cannot_load_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(ReferenceFailed, match="'missing'.*exited"):
        References(tmp_path, ["missing"], 0.3, None, print)
