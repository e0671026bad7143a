"""What the examples of a request make, counted before any is decoded, and the
same request parsed with its examples left serialized."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.message import DecodeError
from modelserver import examplesize
from modelserver.errors import InvalidInput
from modelserver.protocol.grpc import serializedinput
from servekit_protocol import examples as example_codec
from servekit_protocol import messages
from servekit_protocol.tensor_limits import TensorLimits


def _input(rows: list[dict[str, Any]], context: dict[str, Any] | None = None) -> Any:
    return example_codec.from_dicts(rows, context)


def _refused(request_input: Any, limits: TensorLimits) -> str:
    with pytest.raises(InvalidInput) as refused:
        examplesize.check_input(request_input, limits)
    return refused.value.message


def test_a_feature_counts_its_values_a_count_and_an_index() -> None:
    example = example_codec.from_dict({"f": [1.0, 2.0], "i": [3], "s": [b"abc"]})
    sizes = {
        name: examplesize.feature_size(feature)
        for name, feature in example.features.feature.items()
    }
    assert sizes == {"f": (2, 16 + 16), "i": (1, 16 + 8), "s": (1, 16 + 48 + 3)}
    assert examplesize.feature_size(messages.Feature()) == (0, 16)


def test_the_context_counts_once_an_example_unless_the_example_replaces_it() -> None:
    rows = [{"a": [1.0]}, {"a": [2.0], "big": [0.5]}, {}]
    context = {"big": [0.0] * 10}
    # Merged: 1 + 10, 1 + 1, 10 values; 2 + 2 + 1 features of 16 bytes each;
    # 3 examples of 48.
    values = 11 + 2 + 10
    size = values * 8 + 5 * 16 + 3 * 48
    request_input = _input(rows, context)
    examplesize.check_input(
        request_input, TensorLimits(max_elements=values, max_bytes=size)
    )
    for limits in (
        TensorLimits(max_elements=values - 1, max_bytes=size),
        TensorLimits(max_elements=values, max_bytes=size - 1),
    ):
        assert "at least" in _refused(request_input, limits)


def test_the_parser_counts_an_example_as_its_features_hold() -> None:
    example = example_codec.from_dict(
        {"f": [1.0, 2.0], "i": [3, 4, 5], "s": [b"abc", b""], "e": []}
    )
    counted = serializedinput.tally(example.SerializeToString(), names=True)
    assert (counted.numbers, counted.texts, counted.text_bytes) == (5, 2, 3)
    assert counted.features == 4
    assert sorted(counted.names) == ["e", "f", "i", "s"]
    # A name sent twice is one feature, as parsed; its values count twice.
    twice = serializedinput.tally(example.SerializeToString() * 2)
    assert (twice.numbers, twice.features) == (10, 4)


def test_a_large_context_over_many_empty_examples_is_refused() -> None:
    request_input = _input([{}] * 100_000, {"wide": [b"x" * 1000]})
    message = _refused(request_input, TensorLimits(max_bytes=1 << 20))
    assert message.startswith("The request's examples hold at least ")
    assert message.endswith(
        "with their context merged in; the limit is 33554432 values "
        "(1048576 bytes) per request"
    )


def test_the_serialized_size_bounds_the_count_and_past_it_the_count_is_exact() -> None:
    # 1,000 examples of one feature of one value: 48 + 16 + 8 bytes each.
    request_input = _input([{"a": [1.0]}] * 1000)
    wire = request_input.example_list.ByteSize()
    assert examplesize.within_bound(wire, TensorLimits(max_bytes=24 * wire))
    assert not examplesize.within_bound(wire, TensorLimits(max_bytes=24 * wire - 1))
    assert not examplesize.within_bound(wire, TensorLimits(max_elements=wire - 1))
    examplesize.check_input(request_input, TensorLimits(max_bytes=72 * 1000))
    _refused(request_input, TensorLimits(max_bytes=72 * 1000 - 1))
    _refused(request_input, TensorLimits(max_elements=999))


def test_the_parser_tells_each_features_kinds_of_list() -> None:
    example = example_codec.from_dict({"f": [1.0, 2.0], "s": [b"x"], "e": []})
    # A name sent again replaces the feature, as parsed.
    again = example_codec.from_dict({"f": [3]}).SerializeToString()
    kinds = serializedinput.feature_kinds(example.SerializeToString() + again)
    assert sorted(kinds) == [
        ("e", 0, 0),
        ("f", serializedinput.INTS, 1),
        ("s", serializedinput.TEXTS, 0),
    ]
    # A feature sent with a float_list and then an int64_list keeps both here
    # (the parsed one keeps the last).
    floats = example_codec.from_dict({"g": [1.5]}).features.feature["g"]
    ints = example_codec.from_dict({"g": [2]}).features.feature["g"]
    both = floats.SerializeToString() + ints.SerializeToString()
    entry = b"\x0a\x01g\x12" + bytes([len(both)]) + both
    features = b"\x0a" + bytes([len(entry)]) + entry
    kinds = serializedinput.feature_kinds(b"\x0a" + bytes([len(features)]) + features)
    assert kinds == (("g", serializedinput.FLOATS | serializedinput.INTS, 2),)


def _exact_bytes(rows: list[dict[str, Any]], context: dict[str, Any] | None) -> int:
    """The bytes limit the input of ``rows`` just meets (refused one under)."""
    request_input = _input(rows, context)
    low, high = 0, 1 << 20
    while low < high:
        middle = (low + high) // 2
        try:
            examplesize.check_input(request_input, TensorLimits(max_bytes=middle))
        except InvalidInput:
            low = middle + 1
        else:
            high = middle
    return low


@pytest.mark.parametrize(
    "first", [{"x": [b""]}, {"x": [7]}], ids=["bytes first", "int64 first"]
)
def test_numbers_of_a_feature_of_mixed_kinds_count_as_objects(
    first: dict[str, Any],
) -> None:
    floats = [{"x": [1.0] * 10}] * 20
    # 21 examples of 48 bytes and a feature of 16 each.
    examples = 21 * (48 + 16)
    # The first example's value: 8 bytes a number, 48 an empty bytes value.
    first_bytes = 48 if first["x"] == [b""] else 8
    # Of one kind, the 200 floats are 8 bytes each.
    assert _exact_bytes([{"x": [0.5]}, *floats], None) == examples + 8 + 200 * 8
    # Mixed, 56 each, as is the int 7.
    first_mixed = 48 if first["x"] == [b""] else 56
    assert _exact_bytes([first, *floats], None) == examples + first_mixed + 200 * 56
    # The same values in a feature of another name mix nothing.
    assert _exact_bytes([{"y": first["x"]}, *floats], None) == (
        examples + first_bytes + 200 * 8
    )


def test_a_context_feature_of_another_kind_mixes_where_it_is_merged() -> None:
    # x: 1.5 in the first example, the context's int in the second.
    rows: list[dict[str, Any]] = [{"x": [1.5]}, {}]
    merged = 2 * 48 + 2 * (16 + 8)
    assert _exact_bytes(rows, {"x": [1]}) == merged + 2 * 48
    # Replaced in every example, the context's kind is in no column.
    assert _exact_bytes([{"x": [1.5]}, {"x": [2.5]}], {"x": [1]}) == merged
    assert _exact_bytes(rows, {"x": [2.5]}) == merged


def _request(method: str, request_input: Any) -> Any:
    if method == "MultiInference":
        request: Any = messages.MultiInferenceRequest()
        for signature in ("one", "two"):
            task = request.tasks.add()
            task.model_spec.name = "m"
            task.model_spec.signature_name = signature
            task.method_name = "tensorflow/serving/regress"
    else:
        kind = {
            "Classify": messages.ClassificationRequest,
            "Regress": messages.RegressionRequest,
        }[method]
        request = kind()
        request.model_spec.name = "m"
        request.model_spec.version.value = 3
    request.input.CopyFrom(request_input)
    return request


@pytest.mark.parametrize("method", ["Classify", "Regress", "MultiInference"])
@pytest.mark.parametrize("with_context", [False, True])
def test_a_request_parsed_serialized_has_the_examples_of_the_whole(
    method: str, with_context: bool
) -> None:
    rows = [{"a": [1.0], "s": [b"x"]}, {"b": [2, 3]}]
    request = _request(method, _input(rows, {"c": [4.0]} if with_context else None))
    parsed = serializedinput.parse(method, request.SerializeToString())
    examples = [messages.Example.FromString(data) for data in parsed.examples]
    assert examples == [example_codec.from_dict(row) for row in rows]
    if with_context:
        assert parsed.context is not None
        assert messages.Example.FromString(parsed.context) == (
            example_codec.from_dict({"c": [4.0]})
        )
    else:
        assert parsed.context is None
    if method == "MultiInference":
        tasks = [messages.InferenceTask.FromString(data) for data in parsed.head]
        assert tasks == list(request.tasks)
    else:
        assert messages.ModelSpec.FromString(b"".join(parsed.head)) == (
            request.model_spec
        )


def test_a_context_sent_twice_is_merged_as_the_whole_message_merges_it() -> None:
    first = _request("Regress", _input([{"a": [1.0]}], {"c": [1.0], "d": [2]}))
    second = _request("Regress", _input([{"a": [2.0]}], {"c": [3.0]}))
    data = first.SerializeToString() + second.SerializeToString()
    whole = messages.RegressionRequest.FromString(data)
    parsed = serializedinput.parse("Regress", data)
    assert parsed.context is not None
    assert messages.Example.FromString(parsed.context) == (
        whole.input.example_list_with_context.context
    )
    assert [messages.Example.FromString(e) for e in parsed.examples] == list(
        whole.input.example_list_with_context.examples
    )


def test_an_example_that_does_not_parse_names_the_request_as_a_whole_parse_does() -> (
    None
):
    corrupt = b"\x0a\x05\x0a\x03\x0a\xff\xff"
    with pytest.raises(DecodeError) as whole:
        messages.RegressionRequest.FromString(
            b"\x12"
            + bytes([len(corrupt) + 2])
            + (b"\x0a" + bytes([len(corrupt)]) + corrupt)
        )
    with pytest.raises(DecodeError) as part:
        serializedinput.parse_part(messages.Example, corrupt, "Regress")
    assert str(part.value) == str(whole.value)
