"""The REST ``:classify`` and ``:regress`` writers against the gRPC message's
JSON, byte for byte."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from modelserver.errors import InvalidInput
from modelserver.protocol.grpc import converters
from modelserver.protocol.rest.codec import (
    SCAN_STEP,
    classify_json,
    mentions_any,
    regress_json,
)
from modelserver.runtimes.base import classification_results, regression_results
from modelserver.types import Classifications
from servekit_protocol import json_codec, messages


def _of_message(results: Classifications) -> bytes:
    """What the answer was before the writer: the ClassificationResult message
    (as sent over gRPC) written by ``json_codec``."""
    result = messages.ClassificationResult()
    converters.fill_classifications(results, result)
    return json_codec.format_classify_response(result)


def _labels(rows: int, classes: int, kind: str) -> Any:
    if kind == "none":
        return None
    values: list[object] = [f"class-{index}" for index in range(classes)]
    if kind == "per example":
        # Labels that differ by example, as a TensorFlow model's classes may.
        texts = np.array(
            [[f"{row}-{index}" for index in range(classes)] for row in range(rows)]
        )
        return texts.astype(object).reshape(rows, classes)
    if kind == "bytes":
        values = [b"\xff\xfe" + str(index).encode() for index in range(classes)]
    elif kind == "unicode":
        values = [f"klasse-\u00e9\u4e2d-{index}" for index in range(classes)]
    row = np.empty(classes, dtype=object)
    row[:] = values
    return np.broadcast_to(row, (rows, classes))


@pytest.mark.parametrize(
    "label_kind", ["str", "bytes", "unicode", "none", "per example"]
)
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (50, 10), (4, 0)])
def test_the_answer_is_the_message_s_json(
    label_kind: str, shape: tuple[int, int]
) -> None:
    rng = np.random.default_rng(sum(shape))
    scores = rng.normal(scale=1e3, size=shape) ** 3
    results = classification_results(_labels(*shape, label_kind), scores, shape[0])
    assert classify_json(results) == _of_message(results)


def test_non_finite_scores_are_written_as_the_message_s() -> None:
    scores = np.array(
        [[np.nan, 0.25, 1.0], [np.inf, -np.inf, 3e38], [0.1, 0.2, 1e-45], [-0.0, 0, 1]]
    )
    results = classification_results(_labels(4, 3, "str"), scores, 4)
    assert classify_json(results) == _of_message(results)


def test_scores_missing_are_zero_as_in_the_message() -> None:
    results = classification_results(_labels(3, 2, "str"), None, 3)
    assert classify_json(results) == _of_message(results)
    assert b'"class-1",0.0' in classify_json(results)


def test_no_examples_is_refused_as_tf_serving_does() -> None:
    results = classification_results(None, np.zeros((0, 2)), 0)
    with pytest.raises(InvalidInput, match="empty ClassificationResults"):
        classify_json(results)


@pytest.mark.parametrize("size", [1, 2, 1000])
def test_a_regression_answer_is_the_message_s_json(size: int) -> None:
    values = np.random.default_rng(size).normal(scale=1e3, size=size) ** 3
    specials = np.array([np.nan, np.inf, -np.inf, 1e-45, -0.0])
    values[: min(size, 5)] = specials[: min(size, 5)]
    results = regression_results(values, size)
    message = messages.RegressionResult()
    converters.fill_regressions(results, message)
    assert regress_json(results) == json_codec.format_regress_response(message)


def test_no_regression_values_is_refused_as_tf_serving_does() -> None:
    with pytest.raises(InvalidInput, match="empty RegressionResults"):
        regress_json(np.zeros(0, np.float32))


@pytest.mark.parametrize(
    ("offset", "found"),
    [
        (0, True),
        (SCAN_STEP - 5, True),  # across the first step's end
        (SCAN_STEP, True),
        (2 * SCAN_STEP + 100, True),
        (None, False),
    ],
)
async def test_a_large_body_is_searched_a_step_at_a_time(
    offset: int | None, found: bool
) -> None:
    body = bytearray(b" " * (3 * SCAN_STEP))
    needle = b'"signature_name"'
    if offset is not None:
        body[offset : offset + len(needle)] = needle
    assert await mentions_any(bytes(body), b"\\u", needle) is found
