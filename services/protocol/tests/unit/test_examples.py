"""tf.Example <-> dict conversions."""

import numpy as np
import pytest
from servekit_protocol import examples, messages
from servekit_protocol.errors import InvalidArgument


def test_from_dict_picks_list_types_like_tf_serving() -> None:
    example = examples.from_dict(
        {
            "f": 1.5,
            "i": 3,
            "flag": True,
            "mixed": [1, 2.5],
            "s": "héllo",
            "b": [b"\x00", "x"],
            "arr": np.array([1, 2], np.int32),
            "np_scalar": np.float32(0.5),
        }
    )
    assert examples.to_dict(example) == {
        "f": [1.5],
        "i": [3],
        "flag": [1],
        "mixed": [1.0, 2.5],
        "s": ["héllo".encode()],
        "b": [b"\x00", b"x"],
        "arr": [1, 2],
        "np_scalar": [0.5],
    }


def test_empty_list_leaves_the_kind_unset() -> None:
    example = examples.from_dict({"e": []})
    assert example.features.feature["e"].WhichOneof("kind") is None
    assert examples.to_dict(example) == {"e": []}


@pytest.mark.parametrize("value", [None, ["a", 1], [[1]], [object()]])
def test_unrepresentable_values_are_rejected(value: object) -> None:
    with pytest.raises(InvalidArgument):
        examples.from_dict({"x": value})  # type: ignore[dict-item]


def test_context_is_merged_and_examples_win() -> None:
    request_input = examples.from_dicts(
        [{"x": 1.0, "c": 9}, {"x": 2.0}], context={"c": 5}
    )
    assert request_input.WhichOneof("kind") == "example_list_with_context"
    merged = [examples.to_dict(e) for e in examples.merged_examples(request_input)]
    assert merged == [{"x": [1.0], "c": [9]}, {"x": [2.0], "c": [5]}]
    serialized = examples.serialized_examples(request_input)
    # Concatenated messages parse as one merged message, like TF Serving feeds them.
    assert [
        examples.to_dict(messages.Example.FromString(s)) for s in serialized
    ] == merged


def test_plain_example_list() -> None:
    request_input = examples.from_dicts([{"x": 1}])
    assert request_input.WhichOneof("kind") == "example_list"
    assert examples.serialized_examples(request_input) == [
        request_input.example_list.examples[0].SerializeToString()
    ]
    assert examples.from_dicts([]).WhichOneof("kind") == "example_list"
    assert examples.merged_examples(messages.Input()) == []
