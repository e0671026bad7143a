"""Classify, Regress and MultiInference answers built in a worker from the
arrays of :mod:`modelserver.protocol.answerarrays` are the bytes of the answers
built in place, over gRPC and REST, real worker processes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from modelserver.protocol import answerarrays
from modelserver.protocol.grpc import converters
from modelserver.protocol.grpc.largeanswers import AnswerWriter
from modelserver.protocol.rest import codec
from modelserver.types import (
    Classifications,
    ClassifyResponse,
    MultiInferenceResponse,
    RegressResponse,
    ResolvedSpec,
)
from servekit_protocol import messages
from servekit_protocol.json_codec import BodyParsers

SPEC = ResolvedSpec("model", 2, "serving_default")
EXAMPLES = 500
CLASSES = 3


@pytest.fixture(scope="module")
def parsers() -> Iterator[BodyParsers]:
    """One worker that writes every answer (threshold of one element)."""
    running = BodyParsers(workers=1, answer_threshold_elements=1)
    try:
        yield running
    finally:
        running.close()


def _scores() -> np.ndarray[Any, Any]:
    scores = np.random.default_rng(4).random((EXAMPLES, CLASSES))
    return scores.astype(np.float32).astype(np.float64)


def _classifications() -> dict[str, Classifications]:
    row = np.array(["cat", "chien", "é"], dtype=object)
    full = np.array([[f"c{i}-{j}" for j in range(CLASSES)] for i in range(EXAMPLES)])
    return {
        "shared-row": Classifications(
            np.broadcast_to(row, (EXAMPLES, CLASSES)), _scores(), EXAMPLES, CLASSES
        ),
        "shared-str-row": Classifications(
            np.broadcast_to(row.astype(str), (EXAMPLES, CLASSES)),
            _scores(),
            EXAMPLES,
            CLASSES,
        ),
        "full-str": Classifications(full, _scores(), EXAMPLES, CLASSES),
        "full-bytes-objects": Classifications(
            np.vectorize(str.encode, otypes=[object])(full), None, EXAMPLES, CLASSES
        ),
        "full-bytes-not-utf-8": Classifications(
            np.array(
                [[b"\xff%d" % i, b"caf\xc3\xa9", b"\xc3"] for i in range(EXAMPLES)],
                dtype=object,
            ),
            _scores(),
            EXAMPLES,
            CLASSES,
        ),
        "tiled-bytes-objects": Classifications(
            np.array([[b"large", b"\xfe", b""]] * EXAMPLES, dtype=object),
            _scores(),
            EXAMPLES,
            CLASSES,
        ),
        "full-str-objects": Classifications(
            full.astype(object), _scores(), EXAMPLES, CLASSES
        ),
        "mixed-objects": Classifications(
            np.array([["a", b"b", 3]] * EXAMPLES, dtype=object),
            _scores(),
            EXAMPLES,
            CLASSES,
        ),
        "no-labels": Classifications(None, _scores(), EXAMPLES, CLASSES),
        "one-example": Classifications(
            np.array([["a", "b", "c"]]), _scores()[:1], 1, CLASSES
        ),
    }


CLASSIFICATIONS = _classifications()
VALUES = np.random.default_rng(6).normal(size=70_000).astype(np.float32)


async def test_a_shared_label_row_travels_as_one_row_and_comes_back_broadcast() -> None:
    results = CLASSIFICATIONS["shared-str-row"]
    arrays, shape = await answerarrays.classification_arrays(results, "1.")
    assert sorted(arrays) == ["1.label_row", "1.scores"]
    assert arrays["1.label_row"].shape == (CLASSES,)
    back = answerarrays.classifications_of(arrays, shape, "1.")
    assert back.labels is not None and results.labels is not None
    assert back.labels.strides[0] == 0
    assert back.labels.tolist() == results.labels.tolist()
    assert back.scores is results.scores


@pytest.mark.parametrize(
    ("case", "shared"),
    [
        ("shared-row", True),
        ("tiled-bytes-objects", True),
        ("full-bytes-objects", False),
        ("full-bytes-not-utf-8", False),
        ("full-str-objects", False),
    ],
)
async def test_object_labels_travel_as_numeric_arrays_not_pickled(
    case: str, shared: bool
) -> None:
    results = CLASSIFICATIONS[case]
    arrays, shape = await answerarrays.classification_arrays(results, "1.")
    assert all(array.dtype != object for array in arrays.values())
    labels_count = CLASSES if shared else EXAMPLES * CLASSES
    assert arrays["1.label_offsets"].shape == (labels_count + 1,)
    back = answerarrays.classifications_of(arrays, shape, "1.")
    assert back.labels is not None and results.labels is not None
    assert back.labels.tolist() == results.labels.tolist()
    assert (back.labels.strides[0] == 0) is shared


async def test_labels_of_mixed_kinds_still_travel_as_objects() -> None:
    results = CLASSIFICATIONS["mixed-objects"]
    arrays, shape = await answerarrays.classification_arrays(results)
    assert arrays["labels"] is results.labels
    back = answerarrays.classifications_of(arrays, shape)
    assert back.labels is results.labels


def test_regression_values_come_back_as_the_runtime_s_array() -> None:
    values = np.array([*VALUES[:10], np.nan, np.inf, -0.0, 1e-45], np.float32)
    arrays = answerarrays.regression_arrays(values, "2.")
    assert list(arrays) == ["2.values"]
    back = answerarrays.regression_values(arrays, "2.")
    assert back is values


@pytest.mark.parametrize("case", list(CLASSIFICATIONS))
async def test_classify_answers_written_in_a_worker_are_the_in_place_bytes(
    parsers: BodyParsers, case: str
) -> None:
    results = CLASSIFICATIONS[case]
    response = ClassifyResponse(SPEC, results)
    in_worker = await AnswerWriter(parsers).classify(response)
    assert isinstance(in_worker, messages.Serialized)
    in_place = converters.from_classify_response(response).SerializeToString()
    assert in_worker.data == in_place
    assert await codec.encode_classify(results, parsers) == codec.classify_json(results)


async def test_regress_answers_written_in_a_worker_are_the_in_place_bytes(
    parsers: BodyParsers,
) -> None:
    response = RegressResponse(SPEC, VALUES)
    in_worker = await AnswerWriter(parsers).regress(response)
    assert isinstance(in_worker, messages.Serialized)
    in_place = converters.from_regress_response(response).SerializeToString()
    assert in_worker.data == in_place
    assert await codec.encode_regress(VALUES, parsers) == codec.regress_json(VALUES)


async def test_multi_inference_answers_written_in_a_worker_are_the_in_place_bytes(
    parsers: BodyParsers,
) -> None:
    response = MultiInferenceResponse(
        [
            RegressResponse(SPEC, VALUES[:EXAMPLES]),
            ClassifyResponse(SPEC, CLASSIFICATIONS["shared-row"]),
            ClassifyResponse(SPEC, CLASSIFICATIONS["full-bytes-objects"]),
            RegressResponse(ResolvedSpec("other", 7, "regress"), VALUES[-EXAMPLES:]),
        ]
    )
    in_worker = await AnswerWriter(parsers).multi_inference(response)
    assert isinstance(in_worker, messages.Serialized)
    in_place = converters.from_multi_inference_response(response).SerializeToString()
    assert in_worker.data == in_place
