"""The coalescer strategies' pure parts: which requests merge, and merging and
splitting tensors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gateway.clients.answers import ReceivedAnswer
from gateway.clients.arrays import (
    ArrayRequest,
    ArrayResponse,
    merge_arrays,
    split_arrays,
)
from gateway.clients.batchkeys import array_key, proto_key, rest_key
from gateway.clients.protobatch import (
    declared_bytes,
    merge_requests,
    merged_request,
    split_answer,
    split_response,
    write_merged,
)
from gateway.clients.restbatch import rest_predict
from servekit_protocol import messages
from servekit_protocol.tensor_limits import DECODE_IN_THREAD_BYTES
from servekit_protocol.tensors import from_ndarray, to_ndarray


def _request(
    inputs: dict[str, np.ndarray], *, model: str = "m", signature: str = ""
) -> messages.PredictRequest:
    request = messages.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for name, array in inputs.items():
        # Packed, as tf.make_tensor_proto sends numpy arrays.
        from_ndarray(array, into=request.inputs[name], packed=True)
    return request


def test_requests_of_one_layout_share_a_key_and_report_their_rows() -> None:
    one = _request({"a": np.ones(1), "s": np.array([b"x"], dtype=object)})
    three = _request({"a": np.zeros(3), "s": np.array([b"y"] * 3, dtype=object)})
    keyed_one, keyed_three = proto_key(one), proto_key(three)
    assert keyed_one is not None and keyed_three is not None
    assert (keyed_one.rows, keyed_three.rows) == (1, 3)
    assert keyed_one.key == keyed_three.key
    # A string tensor counts a reference per element besides its bytes.
    assert (keyed_one.nbytes, keyed_three.nbytes) == (8 + 8 + 1, 3 * (8 + 8 + 1))
    assert (keyed_one.elements, keyed_three.elements) == (2, 6)


def test_a_filled_tensor_brings_the_bytes_its_shape_declares() -> None:
    keyed = proto_key(_filled(3, 1.0))
    assert keyed is not None
    assert (keyed.rows, keyed.nbytes, keyed.elements) == (3, 3 * 1024 * 8, 3 * 1024)


def test_a_request_whose_shape_cannot_be_read_never_merges() -> None:
    malformed = _filled(1, 1.0)
    malformed.inputs["a"].tensor_shape.dim[1].size = -2
    assert proto_key(malformed) is None


@pytest.mark.parametrize(
    "other",
    [
        _request({"a": np.ones(2)}, model="n"),
        _request({"a": np.ones(2)}, signature="other"),
        _request({"a": np.ones(2, dtype=np.float32)}),
        _request({"a": np.ones((2, 3))}),
    ],
    ids=["model", "signature", "dtype", "trailing-dims"],
)
def test_requests_that_differ_do_not_share_a_key(
    other: messages.PredictRequest,
) -> None:
    base = proto_key(_request({"a": np.ones(2)}))
    assert base is not None
    assert proto_key(other) is not None
    assert proto_key(other) != base


@pytest.mark.parametrize(
    "inputs",
    [
        {"a": np.float64(1.0)},
        {"a": np.ones(2), "b": np.ones(3)},
        {"a": np.ones(0)},
        {},
    ],
    ids=["scalar", "ragged-batch", "empty", "no-inputs"],
)
def test_requests_without_one_batch_dimension_never_merge(
    inputs: dict[str, np.ndarray],
) -> None:
    assert proto_key(_request(inputs)) is None


def test_merge_concatenates_packed_typed_and_string_tensors() -> None:
    first = _request(
        {
            "x": np.array([[1.0, 2.0]], dtype=np.float32),
            "s": np.array([b"a"], dtype=object),
        }
    )
    second = _request(
        {
            "x": np.array([[3.0, 4.0], [5.0, 6.0]], dtype=np.float32),
            "s": np.array([b"b", b"c"], dtype=object),
        }
    )
    # A client may send typed value fields instead of packed bytes.
    second.inputs["x"].ClearField("tensor_content")
    second.inputs["x"].float_val.extend([3.0, 4.0, 5.0, 6.0])
    merged = merge_requests([first, second], [1, 2])
    np.testing.assert_array_equal(
        to_ndarray(merged.inputs["x"]), [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    )
    assert to_ndarray(merged.inputs["s"]).tolist() == [b"a", b"b", b"c"]
    assert merged.inputs["x"].dtype == messages.DataType.DT_FLOAT
    assert merged.model_spec.name == "m"


def test_merge_expands_a_value_that_stands_for_the_whole_tensor() -> None:
    broadcast = messages.PredictRequest()
    tensor = broadcast.inputs["a"]
    tensor.dtype = messages.DataType.DT_DOUBLE
    tensor.tensor_shape.dim.add(size=3)
    tensor.double_val.append(7.0)
    merged = merge_requests([_request({"a": np.array([1.0])}), broadcast], [1, 3])
    np.testing.assert_array_equal(to_ndarray(merged.inputs["a"]), [1, 7, 7, 7])


def _filled(rows: int, value: float) -> messages.PredictRequest:
    """One double value standing for ``rows`` x 1024 elements."""
    request = messages.PredictRequest()
    request.model_spec.name = "m"
    request.output_filter.append("y")
    tensor = request.inputs["a"]
    tensor.dtype = messages.DataType.DT_DOUBLE
    tensor.tensor_shape.dim.add(size=rows)
    tensor.tensor_shape.dim.add(size=1024)
    tensor.double_val.append(value)
    return request


def test_declared_bytes_are_read_from_the_shapes() -> None:
    requests = [_filled(2, 1.0), _request({"b": np.ones(3, dtype=np.float32)})]
    assert declared_bytes(requests) == 2 * 1024 * 8 + 3 * 4
    malformed = _filled(1, 1.0)
    malformed.inputs["a"].tensor_shape.dim[1].size = -2
    assert declared_bytes([malformed]) is None


def test_a_written_merge_is_the_merged_request_s_bytes() -> None:
    requests = [_filled(1, 1.0), _filled(2, 2.0)]
    written = write_merged(requests, [1, 2], 4096)
    assert written.keep_answer_from == 4096
    assert written.model_spec.name == "m"
    expected = merge_requests(requests, [1, 2]).SerializeToString()
    assert written.SerializeToString() == expected


async def test_a_merge_is_written_in_a_thread_from_the_threshold() -> None:
    rows = DECODE_IN_THREAD_BYTES // (1024 * 8)
    below = [_filled(1, 1.0), _filled(rows - 2, 2.0)]
    small = await merged_request(below, [1, rows - 2], 1)
    assert isinstance(small, messages.PredictRequest)
    at = [_filled(1, 1.0), _filled(rows - 1, 2.0)]
    large = await merged_request(at, [1, rows - 1], 1)
    assert not isinstance(large, messages.PredictRequest)
    assert large.keep_answer_from == 1


def test_split_gives_each_caller_its_rows() -> None:
    response = messages.PredictResponse()
    response.model_spec.name = "m"
    response.model_spec.version.value = 4
    from_ndarray(np.arange(12.0).reshape(6, 2), into=response.outputs["scores"])
    labels = response.outputs["labels"]
    labels.dtype = messages.DataType.DT_INT64
    labels.tensor_shape.dim.add(size=6)
    labels.int64_val.extend(range(6))
    parts = split_response(response, [1, 2, 3])
    assert parts is not None
    assert [to_ndarray(p.outputs["labels"]).tolist() for p in parts] == [
        [0],
        [1, 2],
        [3, 4, 5],
    ]
    np.testing.assert_array_equal(
        to_ndarray(parts[2].outputs["scores"]), np.arange(6.0, 12.0).reshape(3, 2)
    )
    assert all(p.model_spec.version.value == 4 for p in parts)


def test_a_kept_answer_splits_into_the_bytes_of_the_parsed_split() -> None:
    response = messages.PredictResponse()
    response.model_spec.name = "m"
    response.model_spec.version.value = 4
    from_ndarray(np.arange(12.0).reshape(6, 2), into=response.outputs["scores"])
    response.outputs["names"].dtype = messages.DataType.DT_STRING
    response.outputs["names"].tensor_shape.dim.add(size=6)
    response.outputs["names"].string_val.extend(b"n%d" % i for i in range(6))
    spec = response.model_spec
    kept = ReceivedAnswer(response.SerializeToString(), spec)
    parts = split_answer(kept, [1, 2, 3])
    expected = split_response(response, [1, 2, 3])
    assert parts is not None and expected is not None
    # Map entries are written in the map's own order, which protobuf leaves
    # open: with several outputs the messages are compared, with one the bytes.
    assert [messages.PredictResponse.FromString(part.data) for part in parts] == (
        expected
    )
    assert all(part.model_spec == response.model_spec for part in parts)
    assert split_answer(kept, [1, 2]) is None
    del response.outputs["names"]
    single = split_answer(ReceivedAnswer(response.SerializeToString(), spec), [2, 4])
    expected = split_response(response, [2, 4])
    assert single is not None and expected is not None
    assert [part.data for part in single] == [
        part.SerializeToString() for part in expected
    ]


def test_split_refuses_outputs_without_the_batch_dimension() -> None:
    response = messages.PredictResponse()
    from_ndarray(np.arange(3.0), into=response.outputs["y"])
    from_ndarray(np.float64(1.0), into=response.outputs["total"])
    assert split_response(response, [1, 2]) is None
    other = messages.PredictResponse()
    from_ndarray(np.arange(4.0), into=other.outputs["y"])
    assert split_response(other, [1, 2]) is None


# ---- array requests (REST callers) --------------------------------------------


def _arrays(
    inputs: dict[str, np.ndarray], *, model: str = "m", signature: str = ""
) -> ArrayRequest:
    request = ArrayRequest(inputs)
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    return request


def test_array_requests_share_keys_with_their_own_kind_only() -> None:
    one = array_key(_arrays({"a": np.ones(1), "b": np.ones((1, 4))}))
    three = array_key(_arrays({"a": np.zeros(3), "b": np.ones((3, 4))}))
    assert one is not None and three is not None
    assert (one.rows, three.rows) == (1, 3)
    assert (one.nbytes, three.nbytes) == (5 * 8, 3 * 5 * 8)
    assert (one.elements, three.elements) == (5, 3 * 5)
    assert one.key == three.key
    for other in (
        _arrays({"a": np.ones(1, dtype=np.float32), "b": np.ones((1, 4))}),
        _arrays({"a": np.ones(1), "b": np.ones((1, 5))}),
        _arrays({"a": np.ones(1), "b": np.ones((1, 4))}, signature="other"),
    ):
        keyed = array_key(other)
        assert keyed is not None and keyed.key != one.key
    for unmergeable in ({"a": np.float64(1)}, {"a": np.ones(2), "b": np.ones(3)}, {}):
        assert array_key(_arrays(unmergeable)) is None


def test_array_merge_encodes_once_and_split_hands_back_each_callers_rows() -> None:
    first = _arrays({"x": np.array([[1.0, 2.0]]), "s": np.array([b"a"], dtype=object)})
    second = _arrays(
        {
            "x": np.array([[3.0, 4.0], [5.0, 6.0]]),
            "s": np.array([b"b", b"c"], dtype=object),
        }
    )
    merged = merge_arrays([first, second])
    proto = merged.to_proto()
    assert proto.model_spec.name == "m"
    np.testing.assert_array_equal(
        to_ndarray(proto.inputs["x"]), [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    )
    assert to_ndarray(proto.inputs["s"]).tolist() == [b"a", b"b", b"c"]

    answer = messages.PredictResponse()
    answer.model_spec.name = "m"
    answer.model_spec.version.value = 4
    from_ndarray(np.array([10, 20, 30], dtype=np.int64), into=answer.outputs["y"])
    parts = split_arrays(ArrayResponse.from_proto(answer), [1, 2])
    assert parts is not None
    assert [part.outputs["y"].tolist() for part in parts] == [[10], [20, 30]]
    assert all(part.model_spec.version.value == 4 for part in parts)
    # An output without the merged batch dimension cannot be split.
    from_ndarray(np.array(7.0), into=answer.outputs["scale"])
    assert split_arrays(ArrayResponse.from_proto(answer), [1, 2]) is None


def test_a_copied_array_request_is_routed_on_its_own() -> None:
    original = _arrays({"x": np.ones(2)})
    copy = original.copy()
    copy.model_spec.version_label = "canary"
    assert original.model_spec.version_label == ""
    assert copy.inputs["x"] is original.inputs["x"]


def test_array_requests_bring_their_bytes_as_the_request_limit_counts_them() -> None:
    strings = np.array([b"ab", b"", b"cdef"], dtype=object)
    keyed = array_key(_arrays({"s": strings, "x": np.ones((3, 2), np.float32)}))
    assert keyed is not None
    # References (8 bytes each) and values (6 bytes), then 3 x 2 float32.
    assert keyed.nbytes == 3 * 8 + 6 + 3 * 2 * 4
    assert keyed.elements == 3 + 3 * 2


def test_an_untranslated_rest_body_brings_its_own_bytes() -> None:
    body = b'{"instances": [[1.0, 2.0], [3.0, 4.0]]}'
    request = rest_predict("/v1/models/m:predict", body)
    assert request is not None
    keyed = rest_key(request)
    assert (keyed.rows, keyed.nbytes, keyed.elements) == (2, len(body), 4)


@pytest.mark.parametrize(
    ("document", "rows", "elements"),
    [
        ({"instances": [[[1, 2, 3]], [[4, 5, 6]]]}, 2, 6),
        ({"instances": [{"a": [1, 2], "b": 3}, {"a": [4, 5], "b": 6}]}, 2, 6),
        ({"instances": [{"a": {"b64": "AA=="}}] * 3}, 3, 3),
        ({"inputs": {"a": [[1, 2], [3, 4], [5, 6]], "b": [1, 2, 3]}}, 3, 9),
        ({"inputs": [[1, 2, 3, 4]] * 5, "signature_name": "s"}, 5, 20),
        ({"instances": [[], []]}, 2, 0),
    ],
)
def test_an_untranslated_rest_body_brings_the_elements_its_nesting_declares(
    document: dict[str, object], rows: int, elements: int
) -> None:
    # What the backend's REST check counts: the rows times the first row's.
    request = rest_predict("/v1/models/m:predict", json.dumps(document).encode())
    assert request is not None
    keyed = rest_key(request)
    assert (keyed.rows, keyed.elements) == (rows, elements)
