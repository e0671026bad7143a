"""Object labels encoded as a buffer and offsets by
:mod:`modelserver.protocol.labelbuffers` come back as the same objects."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from modelserver.protocol import labelbuffers

Array = np.ndarray[Any, Any]


def _objects(rows: list[list[Any]]) -> Array:
    array: Array = np.empty((len(rows), len(rows[0]) if rows else 0), object)
    for index, row in enumerate(rows):
        array[index, :] = row
    return array


def _round_trip(labels: Array) -> tuple[labelbuffers.EncodedLabels, Array]:
    encoded = labelbuffers.encode_labels(labels)
    assert encoded is not None
    assert encoded.data.dtype == np.uint8
    assert encoded.offsets.dtype == np.int64
    back = labelbuffers.decode_labels(encoded, *labels.shape)
    assert back.shape == labels.shape
    assert back.dtype == object
    assert back.tolist() == labels.tolist()
    assert [type(value) for value in back.ravel()] == [
        type(value) for value in labels.ravel()
    ]
    return encoded, back


CASES: dict[str, Array] = {
    "bytes": _objects([[b"cat", b"dog"], [b"", b"x" * 3]]),
    "non-utf-8 bytes": _objects([[b"\xff\xfe", b"ok"], [b"\xc3", b"a\x00"]]),
    "unicode str": _objects([["é", "日本"], ["🙂", ""]]),
    "ascii str": _objects([["a", "bb"], ["ccc", "d"]]),
    "lone surrogate str": _objects([["\udcff", "a"], ["b", "c"]]),
    "very long labels": _objects(
        [[b"a" * 5_000_000, b"b"], [b"c" * 3_000_000, b"\xff" * 7]]
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_labels_come_back_as_the_same_objects(case: str) -> None:
    encoded, _ = _round_trip(CASES[case])
    assert not encoded.encoding.shared_row
    assert encoded.encoding.text is isinstance(CASES[case][0, 0], str)


def test_no_examples_and_no_classes_come_back_empty() -> None:
    for shape in ((0, 3), (4, 0), (0, 0)):
        labels: Array = np.empty(shape, object)
        encoded, back = _round_trip(labels)
        assert encoded.data.size == 0
        assert back.shape == shape


def test_a_row_every_example_has_is_carried_once() -> None:
    row = [b"large", b"\xff", b"", b"x"]
    labels = _objects([row] * 1_000)
    encoded, back = _round_trip(labels)
    assert encoded.encoding.shared_row
    assert encoded.offsets.tolist() == [0, 5, 6, 6, 7]
    assert encoded.data.tobytes() == b"large\xffx"
    assert back.strides[0] == 0


def test_a_broadcast_row_is_encoded_once() -> None:
    row = _objects([["large", "é"]])[0]
    labels = np.broadcast_to(row, (100_000, 2))
    encoded, back = _round_trip(labels)
    assert encoded.encoding.shared_row
    assert encoded.offsets.shape == (3,)
    assert back.strides[0] == 0


def test_rows_that_differ_once_are_all_carried() -> None:
    rows = [[b"a", b"bc"]] * 999 + [[b"ab", b"c"]]
    encoded, _ = _round_trip(_objects(rows))
    assert not encoded.encoding.shared_row
    assert encoded.offsets.shape == (2_001,)


def test_many_labels_over_several_steps_come_back() -> None:
    labels = _objects([[f"c{i}-{j}".encode() for j in range(7)] for i in range(30_000)])
    _round_trip(labels)
    _round_trip(labels.astype(str).astype(object))
    # A view that is not contiguous is read a stretch of a row at a time.
    _round_trip(labels[:, ::2])
    _round_trip(labels.T)


@pytest.mark.parametrize(
    "rows",
    [
        [[b"a", "b"]],
        [[b"a", 1]],
        [[None, None]],
        [[bytearray(b"a"), b"b"]],
    ],
)
def test_labels_of_other_kinds_are_not_encoded(rows: list[list[Any]]) -> None:
    assert labelbuffers.encode_labels(_objects(rows)) is None


def test_kinds_that_change_between_steps_are_not_encoded() -> None:
    rows = [[b"a"]] * 70_000 + [["b"]]
    assert labelbuffers.encode_labels(_objects(rows)) is None
