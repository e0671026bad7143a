"""Typed per-model schemas built from the registry manifests, and their converters.

Each `predict` signature of a manifest becomes pydantic request and response
models (what `/openapi.json` publishes for the typed endpoints) and the
conversions between their rows and TF Serving tensors. The schemas say exactly
what is accepted and answered: integers within their dtype, floats finite and
within their dtype's range (beyond it a value would reach the model as
infinity), null only for columns the model imputes (`Feature.nullable`), and
float outputs that may be null where the model's result is not finite.

A manifest written before `Feature.nullable` existed does not say which columns
the model imputes. Its version keeps answering as it did when published: null
is taken in every float column of a tabular model and reaches the model as NaN
(a model that imputes the column answers, one that does not answers 400), and
the schema's field descriptions say so.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any

import numpy as np
from modelregistry import DTYPES, Manifest, TensorSpec
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    create_model,
)
from servekit_protocol import messages
from servekit_protocol.errors import ProtocolError
from servekit_protocol.serving import DEFAULT_SIGNATURE
from servekit_protocol.tensors import from_ndarray, to_ndarray

from gateway.codecs.answers import typed_predictions
from gateway.errors import InvalidInput

MAX_ROWS = 10_000
"""Rows per typed request."""

_INT_BOUNDS = {
    name: (int(np.iinfo(name).min), int(np.iinfo(name).max))
    for name in DTYPES
    if name != "string" and np.dtype(name).kind in "iu"
}


_FLOAT_MAX = {
    name: float(np.finfo(name).max)
    for name in DTYPES
    if name != "string" and np.dtype(name).kind == "f"
}
"""Largest finite value per float dtype: a larger input would reach the model as
infinity (or overflow it), so it is refused with 422 rather than answered with
non-numbers."""

UNRECORDED_NULL_NOTE = (
    "null reaches the model as NaN: this version's manifest predates servekit "
    "recording which columns a model imputes, so a model that does not impute "
    "this one answers 400"
)
"""How a null-taking field of a manifest without `Feature.nullable` is described."""

NON_FINITE_NOTE = (
    "null where the model's output is not a finite number (NaN or an infinity, "
    "which JSON cannot carry)"
)


class ErrorBody(BaseModel):
    """TF Serving's error body."""

    error: str


class FieldError(BaseModel):
    """One field of a row that does not fit the schema."""

    type: str
    loc: list[str | int]
    msg: str


class ValidationErrorBody(BaseModel):
    """A 422: the first problem in `error`, every one in `detail`."""

    error: str
    detail: list[FieldError]


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error(
        "refused by the model or the backend (TF Serving's INVALID_ARGUMENT and kin)"
    ),
    401: _error("missing or invalid API key"),
    403: _error("key not scoped for this model"),
    404: _error("no such model or version behind the gateway"),
    413: _error("request body over the gateway's limit"),
    422: {
        "model": ValidationErrorBody,
        "description": "rows that do not fit the schema, field by field",
    },
    429: _error("rate limited"),
    503: _error("backend unavailable, or too many requests in flight"),
    504: _error("deadline exceeded"),
}
"""Every error a typed endpoint answers, with the body it answers it with."""


def _scalar_type(dtype: str, nullable: bool) -> Any:
    """The pydantic type of one input value of a manifest dtype."""
    if dtype in _FLOAT_MAX:
        largest = _FLOAT_MAX[dtype]
        number = Annotated[
            float,
            Field(strict=True, allow_inf_nan=False, ge=-largest, le=largest),
            BeforeValidator(functools.partial(_refuse_huge_integer, int(largest))),
        ]
        # Pipelines that impute a column take a missing value; null arrives as NaN.
        return number | None if nullable else number
    if dtype in _INT_BOUNDS:
        low, high = _INT_BOUNDS[dtype]
        return Annotated[StrictInt, Field(ge=low, le=high)]
    if dtype == "bool":
        return StrictBool
    return StrictStr


def _takes_null(spec: FieldSpec) -> bool:
    """Whether the field's schema admits null (scalar float columns only)."""
    return spec.nullable and not spec.row_shape and spec.dtype in _FLOAT_MAX


def _refuse_huge_integer(largest: int, value: Any) -> Any:
    """An integer beyond the dtype's range would round onto its largest float and
    pass the bound; compared exactly, it does not."""
    if type(value) is int and abs(value) > largest:
        raise ValueError(f"{value} is outside the input's float range")
    return value


def _value_type(dtype: str, row_shape: Sequence[int], nullable: bool) -> Any:
    """Nested lists for the per-row dimensions, fixed lengths where known."""
    value: Any = _scalar_type(dtype, nullable and not row_shape)
    for size in reversed(row_shape):
        if size >= 0:
            value = Annotated[list[value], Field(min_length=size, max_length=size)]
        else:
            value = list[value]
    return value


def _output_type(dtype: str, row_shape: Sequence[int]) -> Any:
    """What one output value is in a JSON answer: floats may be null."""
    value: Any = (
        StrictStr
        if dtype == "string"
        else (
            Annotated[float | None, Field(description=NON_FINITE_NOTE)]
            if dtype in _FLOAT_MAX
            else _scalar_type(dtype, nullable=False)
        )
    )
    for size in reversed(row_shape):
        if size >= 0:
            value = Annotated[list[value], Field(min_length=size, max_length=size)]
        else:
            value = list[value]
    return value


def _class_name(*parts: str) -> str:
    words = re.split(r"[^0-9A-Za-z]+", " ".join(parts))
    return "".join(word[:1].upper() + word[1:] for word in words if word)


def _field_key(index: int) -> str:
    # Feature names can be anything ("sepal length (cm)", "model_config"); the
    # Python attribute is synthetic and the JSON name is the alias.
    return f"field_{index}"


@dataclass(frozen=True)
class FieldSpec:
    """One typed field of a row: its JSON name, dtype and per-row shape."""

    name: str
    dtype: str
    row_shape: tuple[int, ...]
    nullable: bool = False
    """A missing value (null) is accepted: the model imputes it."""
    nullable_unrecorded: bool = False
    """The manifest predates `Feature.nullable`: null is accepted as it was
    then, whether or not the model imputes (`UNRECORDED_NULL_NOTE`)."""


@dataclass
class TypedSignature:
    """A manifest signature turned into request/response models and converters."""

    model: str
    version: int
    signature: str
    fields: list[FieldSpec]
    matrix_input: tuple[str, TensorSpec] | None
    """Set when the rows' fields are stacked into one [-1, n] input."""
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    row_model: type[BaseModel]
    request_model: type[BaseModel]
    response_model: type[BaseModel]

    def predict_request(self, rows: list[dict[str, Any]]) -> messages.PredictRequest:
        """Columns (or one matrix) of the rows, typed as the signature says.

        Raises:
            InvalidInput: a value does not fit the tensor dtype.
        """
        request = messages.PredictRequest()
        if self.signature != DEFAULT_SIGNATURE:
            request.model_spec.signature_name = self.signature
        try:
            if self.matrix_input is not None:
                name, spec = self.matrix_input
                matrix = [
                    [_nan_if_none(row[field.name]) for field in self.fields]
                    for row in rows
                ]
                from_ndarray(matrix, spec.dtype, into=request.inputs[name], packed=True)
                return request
            for field in self.fields:
                spec = self.inputs[field.name]
                column = [_nan_if_none(row[field.name]) for row in rows]
                array = np.asarray(
                    column, dtype=object if spec.dtype == "string" else None
                )
                if len(spec.shape) == 2 and spec.shape[1] == 1 and not field.row_shape:
                    array = array.reshape(-1, 1)
                from_ndarray(
                    array, spec.dtype, into=request.inputs[field.name], packed=True
                )
        except ProtocolError as exc:
            raise InvalidInput(exc.message) from exc
        return request

    def output_arrays(
        self, response: messages.PredictResponse
    ) -> dict[str, np.ndarray[Any, Any]]:
        """The signature's outputs from the response tensors.

        Raises:
            InvalidInput: the backend left an output out.
        """
        arrays: dict[str, np.ndarray[Any, Any]] = {}
        for name in self.outputs:
            tensor = response.outputs.get(name)
            if tensor is None:
                raise InvalidInput(f"the backend returned no output {name!r}")
            arrays[name] = to_ndarray(tensor)
        return arrays

    def predictions(self, response: messages.PredictResponse) -> list[Any]:
        """One entry per row from the response tensors.

        Raises:
            InvalidInput: the backend left an output out.
        """
        return typed_predictions(list(self.outputs), self.output_arrays(response))


def _nan_if_none(value: Any) -> Any:
    return math.nan if value is None else value


def _row_fields(
    manifest: Manifest, signature_name: str
) -> tuple[list[FieldSpec], tuple[str, TensorSpec] | None] | None:
    """How rows map onto the signature's inputs, or None when no typed form fits."""
    signature = manifest.signatures.get(signature_name)
    if signature is None or signature.method != "predict" or not signature.inputs:
        return None
    inputs = signature.inputs
    feature_names = [feature.name for feature in manifest.features]
    # Before Feature.nullable, every float column of a tabular model took null.
    unrecorded = {f.name for f in manifest.features if f.nullable is None}
    if manifest.features and set(feature_names) == set(inputs):
        # One input per feature (scikit-learn pipelines): feature order and dtypes.
        fields = [
            FieldSpec(
                f.name,
                inputs[f.name].dtype,
                tuple(inputs[f.name].shape[1:]),
                f.nullable is not False,
                f.name in unrecorded,
            )
            for f in manifest.features
        ]
        fields = [
            replace(f, row_shape=()) if f.row_shape == (1,) else f for f in fields
        ]
        return fields, None
    if manifest.features and len(inputs) == 1:
        name, spec = next(iter(inputs.items()))
        if len(spec.shape) == 2 and spec.shape[1] in (-1, len(manifest.features)):
            fields = [
                FieldSpec(
                    f.name, f.dtype, (), f.nullable is not False, f.name in unrecorded
                )
                for f in manifest.features
            ]
            return fields, (name, spec)
    if any(not spec.shape for spec in inputs.values()):
        return None
    return [
        FieldSpec(
            name,
            spec.dtype,
            tuple(spec.shape[1:]),
            bool(unrecorded),
            bool(unrecorded),
        )
        for name, spec in sorted(inputs.items())
    ], None


def build_typed_signature(
    model: str, version: int, manifest: Manifest, signature_name: str
) -> TypedSignature | None:
    """Pydantic request/response models for one signature (None if none fits)."""
    layout = _row_fields(manifest, signature_name)
    if layout is None:
        return None
    fields, matrix_input = layout
    signature = manifest.signatures[signature_name]
    base = _class_name(model, f"v{version}", signature_name)
    row_definitions: dict[str, Any] = {}
    for index, spec in enumerate(fields):
        description = spec.dtype
        if spec.nullable_unrecorded and _takes_null(spec):
            description = f"{spec.dtype}; {UNRECORDED_NULL_NOTE}"
        row_definitions[_field_key(index)] = (
            _value_type(spec.dtype, spec.row_shape, nullable=spec.nullable),
            Field(alias=spec.name, description=description),
        )
    row_model: type[BaseModel] = create_model(
        f"{base}Row",
        __config__=ConfigDict(extra="forbid", populate_by_name=False),
        **row_definitions,
    )
    example_rows = manifest.examples[:2]
    request_model: type[BaseModel] = create_model(
        f"{base}Request",
        __config__=ConfigDict(
            extra="forbid",
            json_schema_extra={"examples": [{"instances": list(example_rows)}]}
            if example_rows
            else None,
        ),
        instances=(
            list[row_model],
            Field(min_length=1, max_length=MAX_ROWS),
        ),
    )
    outputs = dict(signature.outputs)
    if len(outputs) == 1:
        only = next(iter(outputs.values()))
        prediction: Any = _output_type(only.dtype, tuple(only.shape[1:]))
    else:
        prediction_fields: dict[str, Any] = {
            _field_key(index): (
                _output_type(output.dtype, tuple(output.shape[1:])),
                Field(alias=output_name),
            )
            for index, (output_name, output) in enumerate(outputs.items())
        }
        prediction = create_model(f"{base}Prediction", **prediction_fields)
    response_model: type[BaseModel] = create_model(
        f"{base}Response",
        model=(str, ...),
        version=(int, ...),
        predictions=(list[prediction], ...),
    )
    return TypedSignature(
        model=model,
        version=version,
        signature=signature_name,
        fields=fields,
        matrix_input=matrix_input,
        inputs=dict(signature.inputs),
        outputs=outputs,
        row_model=row_model,
        request_model=request_model,
        response_model=response_model,
    )
