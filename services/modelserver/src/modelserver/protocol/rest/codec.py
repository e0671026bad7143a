"""Glue between TF Serving's REST JSON (:mod:`servekit_protocol.json_codec`) and
the dataplane's types.

The JSON dialect itself (row/columnar formats, ``b64`` values, ``NaN`` tokens,
TF Serving's error texts) lives in ``json_codec``; this module only adapts its
inputs and outputs, and turns its ``InvalidArgument`` into
:class:`~modelserver.errors.InvalidInput`.

Reading a ``:predict`` body needs the signature's input dtypes, which need the
signature name, which is in the body. To parse a body once on the hot path, a
body that cannot contain a ``signature_name`` key (the bytes never spell it,
not even through a ``\\u`` escape) uses the default signature, resolved before
parsing; other bodies are read once for the name first. When resolving fails
(unknown model or signature), the body is checked first so that malformed JSON
is reported before a missing model, in TF Serving's order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np
from servekit_protocol import json_codec, messages, segment_answers, segment_bodies
from servekit_protocol.errors import ProtocolError
from servekit_protocol.json_codec.offload import ParserUnavailable
from servekit_protocol.tensor_limits import TensorLimits

from modelserver.errors import InvalidInput, Overloaded, ServingError
from modelserver.protocol import answerarrays
from modelserver.protocol.grpc import converters
from modelserver.types import (
    Classifications,
    Example,
    ModelMetadata,
    ModelSpec,
    ResolvedSpec,
    SignatureInfo,
    Tensor,
    VersionStatus,
    text_of,
)

SignatureLookup = Callable[[ModelSpec], Awaitable[tuple[ResolvedSpec, SignatureInfo]]]

_SIGNATURE_KEY = b'"signature_name"'
_ESCAPE = b"\\u"
SCAN_STEP = 4 * 1024 * 1024
"""Bytes of a body searched between two yields to the event loop (about 1.5 ms;
a 64 MiB body searched at once held the loop some 30 ms)."""


async def mentions_any(body: bytes, *needles: bytes) -> bool:
    """Whether any of ``needles`` occurs in ``body``, searched a step at a time."""
    overlap = max(len(needle) for needle in needles) - 1
    for start in range(0, len(body), SCAN_STEP):
        if start:
            await asyncio.sleep(0)
        # A needle across the step's end is found in this step, as the search
        # runs ``overlap`` bytes past it.
        end = min(start + SCAN_STEP + overlap, len(body))
        if any(body.find(needle, start, end) >= 0 for needle in needles):
            return True
    return False


_SPECS_CACHE_LIMIT = 256
# Keyed by id(); the cached signature is kept alive (and compared by identity)
# so that an id can never be reused for another signature while cached.
_specs_cache: dict[int, tuple[SignatureInfo, dict[str, json_codec.TensorSpec]]] = {}


def input_specs(signature: SignatureInfo) -> dict[str, json_codec.TensorSpec]:
    """The JSON reader's view of a signature's inputs: dtypes only.

    Shapes are not checked while reading JSON, as in TF Serving: SavedModel
    signatures often declare shapes their graphs do not enforce (TF Serving's
    own ``half_plus_two`` declares ``[-1, 1]`` and answers ``[2.0, 3.0, 4.0]``).
    The runtime sees the real shape.
    """
    cached = _specs_cache.get(id(signature))
    if cached is not None and cached[0] is signature:
        return cached[1]
    specs = {
        name: json_codec.TensorSpec(info.dtype, None)
        for name, info in signature.inputs.items()
    }
    if len(_specs_cache) >= _SPECS_CACHE_LIMIT:
        _specs_cache.clear()
    _specs_cache[id(signature)] = (signature, specs)
    return specs


def _document(body: bytes) -> dict[str, Any]:
    document = json_codec.loads(body)
    if not isinstance(document, dict):
        raise InvalidInput(
            f"JSON Value: {json_codec.dumps(document)[:256].decode()} Is not object"
        )
    return document


def signature_name_of(body: bytes) -> str:
    """The body's ``signature_name`` (empty when it has none).

    Raises:
        InvalidInput: Malformed JSON, not an object, or a name that is no string.
    """
    return _signature_name(_document(body))


def _signature_name(document: dict[str, Any]) -> str:
    name = document.get("signature_name", "")
    if not isinstance(name, str):
        raise InvalidInput(
            "JSON Value: not formatted correctly. "
            "'signature_name' key must be a string value."
        )
    return name


async def decode_predict(
    body: bytes,
    spec: ModelSpec,
    lookup: SignatureLookup,
    parsers: json_codec.BodyParsers,
    limits: TensorLimits | None = None,
) -> tuple[ModelSpec, dict[str, Tensor], json_codec.RequestFormat]:
    """Read a ``:predict`` body for ``spec``; ``parsers`` parses a large one off
    the event loop.

    Returns:
        The spec with the body's signature name, the input arrays and the
        request format (the answer mirrors it).

    Raises:
        InvalidInput: Malformed JSON, unknown inputs, wrong dtypes or shapes,
            tensors above ``limits`` together.
        ServingError: What ``lookup`` raises (unknown model, version, signature);
            ``Overloaded`` when a worker parsing the body died.
    """
    size = len(body)
    try:
        if await mentions_any(body, _SIGNATURE_KEY, _ESCAPE):
            name = await _read_body(parsers, signature_name_of, body)
            spec = replace(spec, signature_name=name)
        try:
            _, signature = await lookup(spec)
        except ServingError:
            await _read_body(parsers, signature_name_of, body)
            raise
        if size < parsers.threshold_bytes:
            parsed = json_codec.parse_predict_request(
                body, input_specs(signature), limits
            )
        else:
            parsed = await segment_bodies.parse_predict(
                parsers, body, input_specs(signature), limits
            )
    except ParserUnavailable as exc:
        raise Overloaded(exc.message) from exc
    except ProtocolError as exc:
        raise InvalidInput(exc.message) from exc
    return spec, parsed.inputs, parsed.format


_Read = TypeVar("_Read")


async def _read_body(
    parsers: json_codec.BodyParsers,
    function: Callable[..., _Read],
    body: bytes,
    *args: Any,
) -> _Read:
    """``function(body, *args)``: in place under the body threshold, in a
    worker with the body moved through a shared memory segment otherwise
    (through the pool's pipe, pickling a large body held the event loop in the
    pool's threads)."""
    if len(body) < parsers.threshold_bytes:
        return function(body, *args)
    return await segment_bodies.run_on_body(parsers, function, body, *args)


async def encode_predict(
    outputs: dict[str, Tensor],
    request_format: json_codec.RequestFormat,
    parsers: json_codec.BodyParsers,
) -> bytes:
    """The ``:predict`` answer in the request's format; ``parsers`` writes a
    large one off the event loop.

    Raises:
        InvalidInput: An output JSON cannot carry.
        Overloaded: The worker writing the answer died.
    """
    try:
        return await _write_answer(
            parsers,
            json_codec.output_elements(outputs),
            json_codec.format_predict_response,
            outputs,
            request_format,
        )
    except ParserUnavailable as exc:
        raise Overloaded(exc.message) from exc
    except ProtocolError as exc:
        raise InvalidInput(exc.message) from exc


def examples_of(
    body: bytes, limits: TensorLimits | None = None
) -> tuple[str, list[Example], Example | None]:
    """A ``:classify``/``:regress`` body's signature name, examples and
    context, read in place (:mod:`~modelserver.protocol.rest.examplebodies`
    reads a large one in a worker).

    Raises:
        InvalidInput: Malformed JSON, no ``examples`` list, bad features, or
            examples over ``limits``.
    """
    try:
        parsed = json_codec.parse_examples_request(body)
    except ProtocolError as exc:
        raise InvalidInput(exc.message) from exc
    examples, context = converters.to_examples(parsed.input, limits)
    return parsed.signature_name, examples, context


def with_signature(spec: ModelSpec, signature_name: str) -> ModelSpec:
    """``spec`` naming the body's signature (empty = the default one)."""
    return replace(spec, signature_name=signature_name) if signature_name else spec


async def encode_classify(
    results: Classifications, parsers: json_codec.BodyParsers
) -> bytes:
    """The ``:classify`` answer; ``parsers`` writes a large one (counted in
    ``(label, score)`` pairs) off the event loop.

    Raises:
        InvalidInput: No results (as in TF Serving).
        Overloaded: The worker writing the answer died.
    """
    if results.size < parsers.answer_threshold_elements:
        return classify_json(results)
    # The labels and scores as arrays (object labels encoded in a thread),
    # which the segment carries.
    arrays, shape = await answerarrays.classification_arrays(results)
    try:
        return await _write_answer(
            parsers, results.size, classify_json_of, arrays, shape
        )
    except ParserUnavailable as exc:
        raise Overloaded(exc.message) from exc


async def encode_regress(results: Tensor, parsers: json_codec.BodyParsers) -> bytes:
    """The ``:regress`` answer; ``parsers`` writes a large one (counted in
    values) off the event loop.

    Raises:
        InvalidInput: No results (as in TF Serving).
        Overloaded: The worker writing the answer died.
    """
    if results.size < parsers.answer_threshold_elements:
        return regress_json(results)
    # The runtime's array, which the segment carries.
    arrays = answerarrays.regression_arrays(results)
    try:
        return await _write_answer(parsers, results.size, regress_json_of, arrays)
    except ParserUnavailable as exc:
        raise Overloaded(exc.message) from exc


async def _write_answer(
    parsers: json_codec.BodyParsers,
    elements: int,
    function: Callable[..., bytes],
    arrays: dict[str, Tensor],
    *args: Any,
) -> bytes:
    """``function(arrays, *args)``: in place under the answer threshold, in a
    worker with the arrays and the answer moved through shared memory
    segments otherwise (through the pool's pipe, a 64 MiB answer held the
    event loop tens of milliseconds in the pool's threads).

    Raises:
        ProtocolError: What ``function`` raises.
        ParserUnavailable: The worker died.
    """
    if elements < parsers.answer_threshold_elements:
        return function(arrays, *args)
    return await segment_answers.write_in_worker(parsers, function, arrays, *args)


def classify_json_of(
    arrays: dict[str, Tensor], shape: answerarrays.ClassificationsShape
) -> bytes:
    """:func:`classify_json` of the classifications ``arrays`` and ``shape``
    hold (:func:`~modelserver.protocol.answerarrays.classification_arrays`), in
    place or in a worker.

    Raises:
        InvalidInput: No results (as in TF Serving).
    """
    return classify_json(answerarrays.classifications_of(arrays, shape))


def regress_json_of(arrays: dict[str, Tensor]) -> bytes:
    """:func:`regress_json` of the values ``arrays`` holds
    (:func:`~modelserver.protocol.answerarrays.regression_arrays`), in a worker.

    Raises:
        InvalidInput: No results (as in TF Serving).
    """
    return regress_json(answerarrays.regression_values(arrays))


def classify_json(results: Classifications) -> bytes:
    """``{"results": [[[label, score], ...], ...]}``, in place or in a worker.

    The same bytes as ``json_codec.format_classify_response`` writes from the
    ClassificationResult message (the gRPC answer), made from the arrays
    without the message: a pair costs 0.3-0.9 µs instead of 3-6 µs. Each
    score is the float32 the message would hold, written as float32; a row
    with a NaN or an infinity takes that function's road for its scores.

    Raises:
        InvalidInput: No results (as in TF Serving).
    """
    examples, classes = results.examples, results.classes
    if examples == 0:
        return _classify_json_of_message(results)
    scores = (
        results.scores.astype(np.float32)
        if results.scores is not None
        else np.zeros((examples, classes), np.float32)
    )
    # float32 scalars, which orjson writes as the message's float32 values.
    flat_scores: list[Any] = list(scores.ravel())
    finite = np.isfinite(scores)
    if not finite.all():
        for index in np.flatnonzero(~finite.all(axis=1)).tolist():
            flat_scores[index * classes : (index + 1) * classes] = (
                json_codec.to_jsonable(scores[index])
            )
    pairs = [
        [label, score]
        for label, score in zip(_flat_labels(results), flat_scores, strict=True)
    ]
    rows = (
        [
            pairs[start : start + classes]
            for start in range(0, examples * classes, classes)
        ]
        if classes
        else [[] for _ in range(examples)]
    )
    return json_codec.dumps({"results": rows})


def _flat_labels(results: Classifications) -> list[str]:
    labels = results.labels
    if labels is None:
        return [""] * results.size
    if labels.strides[0] == 0:
        # One row for every example (a scikit-learn model's classes).
        return [text_of(value) for value in labels[0].tolist()] * results.examples
    return [text_of(value) for value in labels.ravel().tolist()]


def _classify_json_of_message(results: Classifications) -> bytes:
    result = messages.ClassificationResult()
    converters.fill_classifications(results, result)
    try:
        return json_codec.format_classify_response(result)
    except ProtocolError as exc:
        raise InvalidInput(exc.message) from exc


def regress_json(results: Tensor) -> bytes:
    """``{"results": [value, ...]}``, in place or in a worker.

    The same bytes as ``json_codec.format_regress_response`` writes from the
    RegressionResult message (the gRPC answer), whose values are these
    float32s, without building the message: 70 ns a value instead of 1.5 µs.

    Raises:
        InvalidInput: No results (as in TF Serving).
    """
    if results.size:
        values = results.astype(np.float32, copy=False)
        return json_codec.dumps({"results": json_codec.to_jsonable(values)})
    result = messages.RegressionResult()
    converters.fill_regressions(results, result)
    try:
        return json_codec.format_regress_response(result)
    except ProtocolError as exc:
        raise InvalidInput(exc.message) from exc


def encode_status(statuses: Sequence[VersionStatus]) -> bytes:
    """GetModelStatusResponse as TF Serving's JSON."""
    return json_codec.format_status_response(converters.from_version_statuses(statuses))


def encode_metadata(metadata: ModelMetadata) -> bytes:
    """GetModelMetadataResponse as TF Serving's JSON (the map unpacked)."""
    return json_codec.format_metadata_response(converters.from_model_metadata(metadata))
