"""``:classify`` and ``:regress`` bodies: ``examples`` (and ``context``) feature
objects in as tf.Examples, ``results`` out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from servekit_protocol.errors import InvalidArgument
from servekit_protocol.json_codec.arrays import to_jsonable
from servekit_protocol.json_codec.document import (
    debug_text,
    decode_b64,
    dumps,
    is_b64,
    json_type,
    parse_document,
    read_signature_name,
)
from servekit_protocol.messages import (
    ClassificationResult,
    Example,
    Feature,
    Input,
    RegressionResult,
)


@dataclass(frozen=True, slots=True)
class ExamplesBody:
    """A decoded :classify or :regress request."""

    signature_name: str
    input: Input


def _add_feature_value(value: object, name: str, feature: Feature) -> None:
    kind = feature.WhichOneof("kind")

    def mismatch() -> InvalidArgument:
        shown = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}
        return InvalidArgument(
            f"Unexpected element type in feature: {name} expecting type: "
            f"{shown.get(kind or '', 'UNKNOWN')}"
        )

    if isinstance(value, bool):
        if kind not in (None, "int64_list"):
            raise mismatch()
        feature.int64_list.value.append(int(value))
    elif isinstance(value, str) or is_b64(value):
        if kind not in (None, "bytes_list"):
            raise mismatch()
        raw = value.encode("utf-8") if isinstance(value, str) else decode_b64(value)  # type: ignore[arg-type]
        feature.bytes_list.value.append(raw)
    elif isinstance(value, float):
        if kind not in (None, "float_list"):
            raise mismatch()
        feature.float_list.value.append(value)
    elif isinstance(value, int):
        if kind not in (None, "int64_list"):
            raise mismatch()
        if value > 2**63 - 1:
            raise InvalidArgument(
                f"Feature: {name} has uint64_t element. Only int64_t is supported."
            )
        if value < -(2**63):
            raise InvalidArgument(f"Feature: {name} has an integer out of int64 range")
        feature.int64_list.value.append(value)
    else:
        raise InvalidArgument(
            f"Feature: {name} has element with unexpected JSON type: {json_type(value)}"
        )


def example_from_json(value: object) -> Example:
    """A tf.Example from one JSON feature object, by TF Serving's typing rules.

    Raises:
        InvalidArgument: not an object, or a feature TF Serving would reject.
    """
    if not isinstance(value, dict):
        raise InvalidArgument(
            f"Example must be JSON object but got JSON {json_type(value)}"
        )
    example = Example()
    feature_map = example.features.feature
    for name, content in value.items():
        feature = Feature()
        for item in content if isinstance(content, list) else [content]:
            _add_feature_value(item, name, feature)
        feature_map[name].CopyFrom(feature)
    return example


def parse_examples_request(
    body: bytes | bytearray | memoryview | str,
) -> ExamplesBody:
    """Decode a :classify or :regress body into an Input of tf.Examples.

    Raises:
        InvalidArgument: malformed JSON, no ``examples`` list, or bad features.
    """
    document = parse_document(body)
    signature_name = read_signature_name(document)
    request_input = Input()
    context = document.get("context")
    has_context = "context" in document
    if has_context:
        request_input.example_list_with_context.context.CopyFrom(
            example_from_json(context)
        )
    if "examples" not in document:
        raise InvalidArgument(
            f"JSON Value: {debug_text(document)} When method is classify, key 'examples' "
            "is expected and was not found"
        )
    examples = document["examples"]
    if not isinstance(examples, list):
        raise InvalidArgument(
            f"JSON Value: {debug_text(document)} Expecting 'examples' value to be an "
            "list/array"
        )
    if not examples:
        raise InvalidArgument(
            f"JSON Value: {debug_text(document)} 'examples' value is an empty array"
        )
    target = (
        request_input.example_list_with_context.examples
        if has_context
        else request_input.example_list.examples
    )
    for item in examples:
        target.append(example_from_json(item))
    return ExamplesBody(signature_name, request_input)


parse_classify_request = parse_examples_request
parse_regress_request = parse_examples_request


def format_classify_response(result: ClassificationResult) -> bytes:
    """``{"results": [[[label, score], ...], ...]}`` for a ClassificationResult.

    Raises:
        InvalidArgument: the result is empty (as in TF Serving).
    """
    if not result.classifications:
        raise InvalidArgument("Cannot convert empty ClassificationResults to JSON")
    results = []
    for classifications in result.classifications:
        labels = [entry.label for entry in classifications.classes]
        scores = to_jsonable(
            np.array([entry.score for entry in classifications.classes], np.float32)
        )
        results.append([[label, scores[index]] for index, label in enumerate(labels)])
    return dumps({"results": results})


def classification_pairs(result: ClassificationResult, enough: int) -> int:
    """The ``(label, score)`` pairs of ``result``, counted up to ``enough``:
    what decides where its answer is written. The count stops there, so a large
    result costs no more counting than the threshold; a classification with no
    classes counts as one, since its row is written all the same.
    """
    pairs = 0
    for classifications in result.classifications:
        pairs += len(classifications.classes) or 1
        if pairs >= enough:
            break
    return pairs


def format_serialized_classify_response(serialized: bytes) -> bytes:
    """:func:`format_classify_response` of a serialized ClassificationResult:
    what a JSON worker is handed (one buffer to pickle, serialized in C), the
    same bytes as the message written in place.

    Raises:
        InvalidArgument: the result is empty (as in TF Serving).
    """
    return format_classify_response(ClassificationResult.FromString(serialized))


def format_serialized_regress_response(serialized: bytes) -> bytes:
    """:func:`format_regress_response` of a serialized RegressionResult, as
    :func:`format_serialized_classify_response`.

    Raises:
        InvalidArgument: the result is empty (as in TF Serving).
    """
    return format_regress_response(RegressionResult.FromString(serialized))


def format_regress_response(result: RegressionResult) -> bytes:
    """``{"results": [value, ...]}`` for a RegressionResult.

    Raises:
        InvalidArgument: the result is empty (as in TF Serving).
    """
    if not result.regressions:
        raise InvalidArgument("Cannot convert empty RegressionResults to JSON")
    values = np.array([entry.value for entry in result.regressions], np.float32)
    return dumps({"results": to_jsonable(values)})
