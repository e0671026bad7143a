"""Pure batching arithmetic: merging inputs and splitting outputs."""

from __future__ import annotations

import numpy as np
import pytest
from modelserver.batching.merge import (
    merge_inputs,
    padded_size,
    shape_key,
    split_outputs,
)
from modelserver.errors import InternalError, InvalidInput


def test_padded_size_picks_the_next_allowed_size() -> None:
    assert padded_size(3, ()) == 3
    assert padded_size(3, (2, 4, 8)) == 4
    assert padded_size(4, (2, 4, 8)) == 4
    assert padded_size(1, (2, 4, 8)) == 2
    assert padded_size(9, (2, 4, 8)) == 9


def test_merge_concatenates_rows_in_request_order() -> None:
    first = {
        "x": np.array([[1.0], [2.0]]),
        "name": np.array([b"a", b"b"], dtype=object),
    }
    second = {"x": np.array([[3.0]]), "name": np.array([b"c"], dtype=object)}
    merged, total = merge_inputs([first, second])
    assert total == 3
    np.testing.assert_array_equal(merged["x"], [[1.0], [2.0], [3.0]])
    assert merged["name"].tolist() == [b"a", b"b", b"c"]


def test_single_request_is_passed_through_without_copy() -> None:
    only = {"x": np.arange(4.0)}
    merged, total = merge_inputs([only])
    assert total == 4
    assert merged["x"] is only["x"]


def test_padding_to_allowed_size_repeats_the_last_requests_first_row() -> None:
    first = {"x": np.array([1.0, 2.0])}
    second = {"x": np.array([7.0, 8.0, 9.0])}
    merged, total = merge_inputs([first, second], allowed_batch_sizes=(4, 8))
    assert total == 8
    np.testing.assert_array_equal(merged["x"], [1, 2, 7, 8, 9, 7, 7, 7])


def test_variable_length_inputs_are_padded_when_enabled() -> None:
    short = {"rows": np.array([[1.0, 2.0]])}
    long = {"rows": np.array([[3.0, 4.0, 5.0]])}
    merged, total = merge_inputs([short, long], pad_variable_length=True)
    assert total == 2
    np.testing.assert_array_equal(merged["rows"], [[1, 2, 1], [3, 4, 5]])


def test_variable_length_inputs_are_refused_without_padding() -> None:
    short = {"rows": np.array([[1.0, 2.0]])}
    long = {"rows": np.array([[3.0, 4.0, 5.0]])}
    with pytest.raises(InvalidInput, match="padding is turned off"):
        merge_inputs([short, long])


def test_shape_key_separates_what_cannot_share_a_batch() -> None:
    a = {"rows": np.zeros((1, 2))}
    b = {"rows": np.zeros((5, 2))}
    c = {"rows": np.zeros((1, 3))}
    d = {"rows": np.zeros((1, 2), dtype=np.float32)}
    assert shape_key(a) == shape_key(b)
    assert shape_key(a) != shape_key(c)
    assert shape_key(a) != shape_key(d)


def test_split_returns_each_request_its_rows_and_drops_padding() -> None:
    outputs = {"y": np.arange(8.0), "z": np.arange(16.0).reshape(8, 2)}
    parts = split_outputs(outputs, [2, 3], 8)
    assert [part["y"].tolist() for part in parts] == [[0, 1], [2, 3, 4]]
    assert parts[1]["z"].tolist() == [[4, 5], [6, 7], [8, 9]]


def test_split_refuses_outputs_without_the_batch_dimension() -> None:
    with pytest.raises(InternalError, match="0th dimension"):
        split_outputs({"total": np.array(3.0)}, [1, 1], 2)
    with pytest.raises(InternalError, match="0th dimension"):
        split_outputs({"total": np.arange(3.0)}, [1, 1], 2)


def test_split_hands_a_lone_caller_every_output_and_still_checks_them() -> None:
    outputs = {"y": np.arange(3.0), "z": np.arange(6.0).reshape(3, 2)}
    [only] = split_outputs(outputs, [3], 3)
    assert only["y"].tolist() == [0, 1, 2]
    assert only["z"].shape == (3, 2)
    # Padding rows are still dropped for a lone caller.
    [padded] = split_outputs(outputs, [2], 3)
    assert padded["y"].tolist() == [0, 1]
    with pytest.raises(InternalError, match="0th dimension"):
        split_outputs({"total": np.array(3.0)}, [1], 1)
