"""Typed per-model endpoints generated from the registry manifests.

For every model version with a manifest, each `predict` signature gets a route whose
request and response schemas are pydantic models built from the manifest, so they
appear in `/docs` and invalid rows are refused with 422 (field by field) before any
backend call:

    POST /models/{model}/predict                      serving_default, routed version
    POST /models/{model}/{signature}                  another signature (e.g. predict_proba)
    POST /models/{model}/versions/{version}/predict   (and /{signature}) one version

Request: `{"instances": [row, ...]}`, a row being an object with one field per
feature (tabular models) or per signature input (e.g. `pixels: [64 floats]`).
Response: `{"model", "version", "predictions": [...]}` with one entry per row (a
value for single-output signatures, an object with one field per output otherwise).
The routes are rebuilt whenever the registry changes.
"""

from __future__ import annotations

import inspect
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.routing import APIRoute
from modelregistry import DTYPES, Manifest, TensorSpec
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    create_model,
)
from servekit_protocol import messages
from servekit_protocol.errors import ProtocolError
from servekit_protocol.tensors import from_ndarray, to_ndarray
from starlette.responses import Response

from gateway.context import CallContext
from gateway.dataplane import Gateway
from gateway.errors import InvalidInput, ModelNotFound, UnprocessableInput
from gateway.forwarding import PredictCall
from gateway.routes.handling import authorize, json_response, serve_http
from gateway.routing.router import Plan, Target
from gateway.signatures import DEFAULT_SIGNATURE

logger = logging.getLogger(__name__)

PROTOCOL = "typed"
MAX_ROWS = 10_000
TYPED_TAG = "typed model endpoints"

_INT_BOUNDS = {
    name: (int(np.iinfo(name).min), int(np.iinfo(name).max))
    for name in DTYPES
    if name != "string" and np.dtype(name).kind in "iu"
}


def _scalar_type(dtype: str, nullable_numbers: bool) -> Any:
    """The pydantic type of one value of a manifest dtype."""
    if dtype.startswith("float"):
        number = Annotated[float, Field(strict=True, allow_inf_nan=True)]
        # Tabular pipelines impute missing values; null arrives as NaN.
        return number | None if nullable_numbers else number
    if dtype in _INT_BOUNDS:
        low, high = _INT_BOUNDS[dtype]
        return Annotated[StrictInt, Field(ge=low, le=high)]
    if dtype == "bool":
        return StrictBool
    return StrictStr


def _value_type(dtype: str, row_shape: Sequence[int], nullable: bool) -> Any:
    """Nested lists for the per-row dimensions, fixed lengths where known."""
    value: Any = _scalar_type(dtype, nullable and not row_shape)
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

    def predictions(self, response: messages.PredictResponse) -> list[Any]:
        """One entry per row from the response tensors."""
        columns: dict[str, list[Any]] = {}
        for name in self.outputs:
            tensor = response.outputs.get(name)
            if tensor is None:
                raise InvalidInput(f"the backend returned no output {name!r}")
            columns[name] = _json_values(to_ndarray(tensor))
        if len(self.outputs) == 1:
            return next(iter(columns.values()))
        count = min(len(values) for values in columns.values())
        return [{name: columns[name][i] for name in columns} for i in range(count)]


def _nan_if_none(value: Any) -> Any:
    return math.nan if value is None else value


def _json_values(array: np.ndarray[Any, Any]) -> list[Any]:
    if array.dtype.kind == "O":
        decoded = np.empty(array.shape, dtype=object)
        flat = decoded.reshape(-1)
        for index, item in enumerate(array.reshape(-1).tolist()):
            flat[index] = (
                item.decode("utf-8", errors="replace")
                if isinstance(item, bytes)
                else item
            )
        result: list[Any] = decoded.tolist()
        return result
    values: list[Any] = array.tolist()
    return values


def _row_fields(
    manifest: Manifest, signature_name: str
) -> tuple[list[FieldSpec], tuple[str, TensorSpec] | None] | None:
    """How rows map onto the signature's inputs, or None when no typed form fits."""
    signature = manifest.signatures.get(signature_name)
    if signature is None or signature.method != "predict" or not signature.inputs:
        return None
    inputs = signature.inputs
    feature_names = [feature.name for feature in manifest.features]
    if manifest.features and set(feature_names) == set(inputs):
        # One input per feature (scikit-learn pipelines): feature order and dtypes.
        fields = [
            FieldSpec(f.name, inputs[f.name].dtype, tuple(inputs[f.name].shape[1:]))
            for f in manifest.features
        ]
        fields = [
            replace(f, row_shape=()) if f.row_shape == (1,) else f for f in fields
        ]
        return fields, None
    if manifest.features and len(inputs) == 1:
        name, spec = next(iter(inputs.items()))
        if len(spec.shape) == 2 and spec.shape[1] in (-1, len(manifest.features)):
            fields = [FieldSpec(f.name, f.dtype, ()) for f in manifest.features]
            return fields, (name, spec)
    if any(not spec.shape for spec in inputs.values()):
        return None
    return [
        FieldSpec(name, spec.dtype, tuple(spec.shape[1:]))
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
    tabular = bool(manifest.features)
    base = _class_name(model, f"v{version}", signature_name)
    row_definitions: dict[str, Any] = {}
    for index, spec in enumerate(fields):
        row_definitions[_field_key(index)] = (
            _value_type(spec.dtype, spec.row_shape, nullable=tabular),
            Field(alias=spec.name, description=f"{spec.dtype}"),
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
        prediction: Any = _value_type(only.dtype, tuple(only.shape[1:]), False)
    else:
        prediction_fields: dict[str, Any] = {
            _field_key(index): (
                _value_type(output.dtype, tuple(output.shape[1:]), False),
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


def _route_suffix(signature_name: str) -> str:
    return "predict" if signature_name == DEFAULT_SIGNATURE else signature_name


class TypedEndpoints:
    """Builds the typed routes from the registry and swaps them in on change."""

    def __init__(self, app: FastAPI, gateway: Gateway) -> None:
        self._app = app
        self._gateway = gateway
        self._schemas: dict[tuple[str, int, str], TypedSignature | None] = {}
        self._routes: list[APIRoute] = []

    def schema(self, model: str, version: int, signature: str) -> TypedSignature | None:
        """The typed form of a version's signature (cached: manifests never change)."""
        key = (model, version, signature)
        if key not in self._schemas:
            registry = self._gateway.registry
            manifest = registry.manifest(model, version) if registry else None
            self._schemas[key] = (
                build_typed_signature(model, version, manifest, signature)
                if manifest is not None
                else None
            )
        return self._schemas[key]

    def rebuild(self) -> None:
        """Regenerate every typed route and the OpenAPI document."""
        registry = self._gateway.registry
        routes: list[APIRoute] = []
        if registry is not None:
            for name, view in sorted(registry.snapshot().items()):
                default = view.default_version()
                for version in view.versions:
                    manifest = view.manifests.get(version)
                    if manifest is None:
                        continue
                    for signature_name in manifest.signatures:
                        if signature_name != DEFAULT_SIGNATURE and (
                            signature_name in ("predict", "versions")
                            or not re.fullmatch(r"[A-Za-z0-9_.-]+", signature_name)
                        ):
                            continue
                        typed = self.schema(name, version, signature_name)
                        if typed is None:
                            continue
                        suffix = _route_suffix(signature_name)
                        routes.append(
                            self._route(
                                f"/models/{name}/versions/{version}/{suffix}",
                                typed,
                                pinned=True,
                            )
                        )
                        if version == default:
                            routes.append(
                                self._route(
                                    f"/models/{name}/{suffix}", typed, pinned=False
                                )
                            )
        kept = [route for route in self._app.router.routes if route not in self._routes]
        self._app.router.routes[:] = [*kept, *routes]
        self._routes = routes
        self._app.openapi_schema = None
        logger.info("typed endpoints rebuilt: %d route(s)", len(routes))

    def _route(self, path: str, typed: TypedSignature, pinned: bool) -> APIRoute:
        gateway = self._gateway
        model = typed.model

        def check_key(request: Request) -> None:
            authorize(gateway, request.headers, model)

        async def endpoint(request: Request, body: BaseModel) -> Response:
            async def handle(ctx: CallContext) -> Response:
                return await self._predict(ctx, typed, pinned, body)

            return await serve_http(request, PROTOCOL, handle)

        endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [
                inspect.Parameter(
                    "request",
                    inspect.Parameter.POSITIONAL_OR_KEYWORD,
                    annotation=Request,
                ),
                inspect.Parameter(
                    "body",
                    inspect.Parameter.POSITIONAL_OR_KEYWORD,
                    annotation=typed.request_model,
                ),
            ],
            return_annotation=typed.response_model,
        )
        which = f"version {typed.version}" if pinned else "the routed version"
        return APIRoute(
            path,
            endpoint,
            methods=["POST"],
            response_model=typed.response_model,
            dependencies=[Depends(check_key)],
            tags=[TYPED_TAG],
            summary=f"{model}: {typed.signature} ({which})",
            description=(
                f"Rows are validated against the manifest of {model} "
                f"version {typed.version} before any backend call."
            ),
            name=f"{model}-{'v' + str(typed.version) if pinned else 'routed'}-"
            f"{typed.signature}",
            responses={
                400: {"description": "rejected by the model"},
                401: {"description": "missing or invalid API key"},
                403: {"description": "key not scoped for this model"},
                429: {"description": "rate limited"},
                503: {"description": "backend unavailable or overloaded"},
                504: {"description": "deadline exceeded"},
            },
        )

    async def _predict(
        self, ctx: CallContext, typed: TypedSignature, pinned: bool, body: BaseModel
    ) -> Response:
        gateway = self._gateway
        rows: list[dict[str, Any]] = [
            row.model_dump(by_alias=True) for row in getattr(body, "instances", [])
        ]
        if pinned:
            plan = gateway.plan(ctx, typed.model, typed.version, None)
        else:
            plan = gateway.plan(ctx, typed.model, None, None)
        primary, schema = self._resolve(plan.primary, typed)
        if schema is not typed:
            rows = self._revalidate(schema, rows)
        shadow = None
        if plan.shadow is not None:
            shadow_target, _ = self._resolve(plan.shadow, typed)
            shadow = shadow_target
        request = schema.predict_request(rows)
        predicted = await gateway.predict(
            ctx,
            Plan(primary, shadow),
            PredictCall(lambda _signatures: request, needs_signatures=False),
        )
        response = predicted.translated
        # A proto request is answered with a proto.
        assert isinstance(response, messages.PredictResponse)
        version = (
            response.model_spec.version.value
            if response.model_spec.HasField("version")
            else schema.version
        )
        return json_response(
            {
                "model": typed.model,
                "version": version,
                "predictions": schema.predictions(response),
            }
        )

    def _resolve(
        self, target: Target, typed: TypedSignature
    ) -> tuple[Target, TypedSignature]:
        """Pin the target to a version number so validation and execution agree."""
        registry = self._gateway.registry
        version = target.version
        if version is None and registry is not None:
            version = registry.resolve(target.model, label=target.label)
        if version is None:
            raise ModelNotFound(
                f"cannot resolve {target.label or 'the default version'} of "
                f"{target.model!r} in the registry"
            )
        schema = self.schema(target.model, version, typed.signature) or typed
        return replace(target, version=version, label=None), schema

    @staticmethod
    def _revalidate(
        schema: TypedSignature, rows: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        # The routed version has other features than the documented default one.
        try:
            return [
                schema.row_model.model_validate(row).model_dump(by_alias=True)
                for row in rows
            ]
        except ValidationError as exc:
            raise UnprocessableInput(
                "the rows do not fit the routed version's schema",
                [_jsonable_error(error) for error in exc.errors()],
            ) from exc


def _jsonable_error(error: Any) -> dict[str, Any]:
    return {
        "type": error.get("type"),
        "loc": ["body", "instances", *error.get("loc", ())],
        "msg": error.get("msg"),
    }


def validation_summary(errors: Sequence[dict[str, Any]]) -> str:
    """One line naming the first invalid field, for the `error` key of a 422."""
    first = errors[0] if errors else {}
    where = ".".join(str(part) for part in first.get("loc", ())) or "body"
    return f"invalid input at {where}: {first.get('msg', 'invalid')}"
