"""Predict answers built in a worker are the bytes of the answer built in place."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from modelserver.protocol.grpc.largeanswers import AnswerWriter
from modelserver.types import PredictResponse, ResolvedSpec
from servekit_protocol import messages
from servekit_protocol.json_codec import BodyParsers

SPEC = ResolvedSpec("wide", 3, "serving_default")


@pytest.fixture(scope="module")
def parsers() -> Iterator[BodyParsers]:
    """One worker that builds every answer (threshold of one element)."""
    running = BodyParsers(workers=1, answer_threshold_elements=1)
    try:
        yield running
    finally:
        running.close()


def _outputs() -> dict[str, dict[str, np.ndarray[Any, Any]]]:
    rng = np.random.default_rng(11)
    wide = rng.normal(size=(6, 5))
    return {
        "float64": {"y": rng.normal(size=(4, 3))},
        "float32": {"y": rng.normal(size=(7,)).astype(np.float32)},
        "int64": {"y": rng.integers(-(2**40), 2**40, size=(3, 2))},
        "int32": {"y": rng.integers(-100, 100, size=(5,)).astype(np.int32)},
        "bool": {"y": np.array([True, False, True])},
        "bytes": {"y": np.array([b"a", b"", b"\xff\x00"], dtype=object)},
        "str": {"y": np.array(["class-1", "é", ""])},
        "scalar": {"y": np.array(2.5)},
        # Views whose memory is not the C-order array they stand for.
        "transposed": {"y": wide.T},
        "broadcast": {"y": np.broadcast_to(np.arange(3.0), (4, 3))},
        "several": {
            "scores": rng.normal(size=(2, 3)),
            "labels": np.array([b"x", b"y"], dtype=object),
            "ids": np.arange(2, dtype=np.int64),
        },
    }


OUTPUTS = _outputs()


@pytest.mark.parametrize("packed", [False, True], ids=["typed", "packed"])
@pytest.mark.parametrize("case", list(OUTPUTS))
async def test_a_worker_built_answer_has_the_in_place_bytes(
    parsers: BodyParsers, case: str, packed: bool
) -> None:
    response = PredictResponse(SPEC, OUTPUTS[case])
    in_place = await AnswerWriter(None).predict(response, packed=packed)
    assert isinstance(in_place, messages.PredictResponse)
    in_worker = await AnswerWriter(parsers).predict(response, packed=packed)
    assert isinstance(in_worker, messages.Serialized)
    if len(response.outputs) == 1:
        assert in_worker.data == in_place.SerializeToString()
    else:
        # The outputs map's entries are written in the order of the writing
        # process's hash seed (upb): two in-place builds in two processes
        # differ the same way. Each entry's bytes and the rest are the same.
        parsed = messages.PredictResponse.FromString(in_worker.data)
        assert parsed == in_place
        assert parsed.SerializeToString(
            deterministic=True
        ) == in_place.SerializeToString(deterministic=True)
        assert len(in_worker.data) == in_place.ByteSize()


async def test_answers_under_the_threshold_are_built_in_place() -> None:
    # The threshold counts the elements of all outputs together.
    parsers = BodyParsers(workers=1, answer_threshold_elements=10)
    writer = AnswerWriter(parsers)
    try:
        small = PredictResponse(SPEC, {"a": np.zeros(4), "b": np.zeros((1, 5))})
        assert isinstance(
            await writer.predict(small, packed=False), messages.PredictResponse
        )
        large = PredictResponse(SPEC, {"a": np.zeros(5), "b": np.zeros((1, 5))})
        assert isinstance(
            await writer.predict(large, packed=False), messages.Serialized
        )
    finally:
        parsers.close()
