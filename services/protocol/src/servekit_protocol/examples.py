"""tf.Example <-> Python dicts, for :classify, :regress and MultiInference.

A feature is always a list in tf.Example. ``to_dict`` returns lists of
``bytes``, ``float`` or ``int``; ``from_dict`` accepts a scalar or a sequence
per feature and picks the list type the way TF Serving's JSON parser does:
integers (and bools) make an Int64List, any float makes a FloatList, and
str/bytes make a BytesList (str as UTF-8).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TypeAlias

import numpy as np

from servekit_protocol.errors import InvalidArgument
from servekit_protocol.messages import (
    Example,
    ExampleList,
    ExampleListWithContext,
    Feature,
    Input,
)

FeatureValues: TypeAlias = list[bytes] | list[float] | list[int]
Scalar: TypeAlias = "bytes | str | float | int | bool | np.generic"
FeatureInput: TypeAlias = "Scalar | Sequence[Scalar] | np.ndarray"


def to_dict(example: Example) -> dict[str, FeatureValues]:
    """Feature name -> values (an unset feature gives an empty list)."""
    result: dict[str, FeatureValues] = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind == "bytes_list":
            result[name] = list(feature.bytes_list.value)
        elif kind == "float_list":
            result[name] = list(feature.float_list.value)
        elif kind == "int64_list":
            result[name] = list(feature.int64_list.value)
        else:
            result[name] = []
    return result


def _fill_feature(name: str, value: FeatureInput, feature: Feature) -> None:
    if isinstance(value, np.ndarray):
        items: list[object] = value.ravel().tolist()
    elif isinstance(value, str | bytes | int | float | np.generic):
        items = [value.item() if isinstance(value, np.generic) else value]
    else:
        items = [v.item() if isinstance(v, np.generic) else v for v in value]
    if not items:
        # An empty list has no type; TF Serving's parser leaves the kind unset.
        return
    texts = [v for v in items if isinstance(v, str | bytes)]
    if len(texts) == len(items):
        feature.bytes_list.value.extend(
            v.encode("utf-8") if isinstance(v, str) else v for v in texts
        )
        return
    # bool is an int subclass; TF Serving's parser also stores it as 0/1.
    integers = [int(v) for v in items if isinstance(v, int)]
    if len(integers) == len(items):
        feature.int64_list.value.extend(integers)
        return
    numbers = [float(v) for v in items if isinstance(v, int | float)]
    if len(numbers) == len(items):
        feature.float_list.value.extend(numbers)
        return
    kinds = sorted({type(v).__name__ for v in items})
    raise InvalidArgument(
        f"Feature {name!r} mixes or has unsupported value types: {', '.join(kinds)}"
    )


def from_dict(features: Mapping[str, FeatureInput]) -> Example:
    """Build an Example from feature name -> scalar or sequence.

    Raises:
        InvalidArgument: a feature mixes strings and numbers, or holds values
            tf.Example cannot represent (None, nested lists, objects).
    """
    example = Example()
    feature_map = example.features.feature
    for name, value in features.items():
        if value is None:
            raise InvalidArgument(f"Feature {name!r} is null")
        _fill_feature(name, value, feature_map[name])
    return example


def from_dicts(
    rows: Iterable[Mapping[str, FeatureInput]],
    context: Mapping[str, FeatureInput] | None = None,
) -> Input:
    """An Input of examples (ExampleListWithContext when a context is given).

    Raises:
        InvalidArgument: see from_dict.
    """
    request_input = Input()
    if context is None:
        example_list: ExampleList | ExampleListWithContext = request_input.example_list
    else:
        example_list = request_input.example_list_with_context
        example_list.context.CopyFrom(from_dict(context))
    for row in rows:
        example_list.examples.append(from_dict(row))
    # An empty list must still select the oneof branch.
    if context is None and not example_list.examples:
        request_input.example_list.SetInParent()
    return request_input


def merged_examples(request_input: Input) -> list[Example]:
    """The examples of an Input with its context merged in.

    As in TF Serving, an example's own feature wins over a context feature of
    the same name.
    """
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        return list(request_input.example_list.examples)
    if kind == "example_list_with_context":
        with_context = request_input.example_list_with_context
        merged = []
        for example in with_context.examples:
            combined = Example()
            combined.CopyFrom(with_context.context)
            combined.MergeFrom(example)
            merged.append(combined)
        return merged
    return []


def serialized_examples(request_input: Input) -> list[bytes]:
    """Serialized tf.Example strings, the input of SavedModel classify/regress signatures.

    The bytes equal what TF Serving feeds: context bytes followed by example
    bytes, which the parser reads as one merged message.
    """
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        return [e.SerializeToString() for e in request_input.example_list.examples]
    if kind == "example_list_with_context":
        with_context = request_input.example_list_with_context
        prefix = with_context.context.SerializeToString()
        return [prefix + e.SerializeToString() for e in with_context.examples]
    return []


__all__ = [
    "FeatureInput",
    "FeatureValues",
    "from_dict",
    "from_dicts",
    "merged_examples",
    "serialized_examples",
    "to_dict",
]
