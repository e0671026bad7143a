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

A body from the JSON offload threshold (`json_offload_bytes`) never reaches
FastAPI: the app hands it to `TypedEndpoints.serve_large_body`, which has it
parsed and validated in a JSON worker (`gateway.codecs.typed_body`) with the
answers FastAPI gives in place. Answers from the answer threshold are written
in a worker too (`gateway.codecs.answers`).
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from servekit_protocol import messages
from servekit_protocol.errors import ProtocolError
from servekit_protocol.messages import PredictRequest
from servekit_protocol.serving import DEFAULT_SIGNATURE
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import Scope

from gateway.codecs.answers import output_elements, write_typed_answer
from gateway.codecs.typed import (
    ERROR_RESPONSES,
    TypedSignature,
    build_typed_signature,
)
from gateway.codecs.typed_body import (
    ROUTED_MISFIT,
    TypedBody,
    TypedSchema,
    field_errors,
    parse_typed_body,
    schema_of,
)
from gateway.context import CallContext
from gateway.dataplane import Gateway
from gateway.errors import (
    BackendUnavailable,
    GatewayError,
    InvalidInput,
    ModelNotFound,
    UnprocessableInput,
)
from gateway.forwarding import PredictCall
from gateway.routes.handling import (
    JSON,
    authorize,
    json_response,
    reject,
    serve_http,
)
from gateway.routing.router import Plan, Target

logger = logging.getLogger(__name__)

PROTOCOL = "typed"
TYPED_TAG = "typed model endpoints"


def _route_suffix(signature_name: str) -> str:
    return "predict" if signature_name == DEFAULT_SIGNATURE else signature_name


class TypedEndpoints:
    """Builds the typed routes from the registry and swaps them in on change."""

    def __init__(self, app: FastAPI, gateway: Gateway) -> None:
        self._app = app
        self._gateway = gateway
        self._schemas: dict[tuple[str, int, str], TypedSignature | None] = {}
        self._body_schemas: dict[tuple[str, int, str], TypedSchema] = {}
        self._routes: list[APIRoute] = []
        self._targets: list[tuple[APIRoute, TypedSignature, bool]] = []

    def schema(self, model: str, version: int, signature: str) -> TypedSignature | None:
        """The typed form of a version's signature (cached: manifests never change)."""
        key = (model, version, signature)
        if key not in self._schemas:
            registry = self._gateway.registry
            manifest = registry.manifest(model, version) if registry else None
            typed = (
                build_typed_signature(model, version, manifest, signature)
                if manifest is not None
                else None
            )
            if typed is not None and manifest is not None:
                self._body_schemas[key] = schema_of(typed, manifest)
            self._schemas[key] = typed
        return self._schemas[key]

    def _body_schema(self, typed: TypedSignature) -> TypedSchema:
        return self._body_schemas[(typed.model, typed.version, typed.signature)]

    def large_body_target(self, scope: Scope) -> tuple[TypedSignature, bool] | None:
        """The typed route a request is for (its signature, and whether its
        version is pinned), or None when no typed route takes it."""
        for route, typed, pinned in self._targets:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return typed, pinned
        return None

    async def serve_large_body(
        self,
        request: Request,
        body: bytes,
        typed: TypedSignature,
        pinned: bool,
    ) -> Response:
        """Answer a typed request whose body is parsed and validated in a JSON
        worker, with what FastAPI's handler would answer in place: the key's
        scope and rate first, then the body's 422 or 400, then the call."""
        gateway = self._gateway
        content_type = request.headers.get("content-type")
        try:
            authorize(gateway, request.headers, typed.model, request.client)
            parsed = await gateway.parsers.run(
                len(body),
                parse_typed_body,
                self._body_schema(typed),
                body,
                content_type,
            )
        except GatewayError as exc:
            return reject(request, PROTOCOL, exc)
        except ProtocolError as exc:
            # The worker died (503).
            return reject(request, PROTOCOL, BackendUnavailable(exc.message))
        refusal = parsed.refusal
        if refusal is not None:
            if refusal.detail is None:
                # FastAPI's own 400 for a body it cannot decode.
                return json_response({"error": refusal.message}, refusal.status)
            return reject(
                request,
                PROTOCOL,
                UnprocessableInput(refusal.message, refusal.detail),
            )

        async def handle(ctx: CallContext) -> Response:
            return await self._predict_parsed(
                ctx, typed, pinned, parsed, body, content_type
            )

        return await serve_http(request, PROTOCOL, handle)

    def rebuild(self) -> None:
        """Regenerate every typed route and the OpenAPI document."""
        registry = self._gateway.registry
        routes: list[APIRoute] = []
        targets: list[tuple[APIRoute, TypedSignature, bool]] = []
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
                        route = self._route(
                            f"/models/{name}/versions/{version}/{suffix}",
                            typed,
                            pinned=True,
                        )
                        routes.append(route)
                        targets.append((route, typed, True))
                        if version == default:
                            route = self._route(
                                f"/models/{name}/{suffix}", typed, pinned=False
                            )
                            routes.append(route)
                            targets.append((route, typed, False))
        kept = [route for route in self._app.router.routes if route not in self._routes]
        self._app.router.routes[:] = [*kept, *routes]
        self._routes = routes
        self._targets = targets
        self._app.openapi_schema = None
        logger.info("typed endpoints rebuilt: %d route(s)", len(routes))

    def _route(self, path: str, typed: TypedSignature, pinned: bool) -> APIRoute:
        gateway = self._gateway
        model = typed.model

        def check_key(request: Request) -> None:
            authorize(gateway, request.headers, model, request.client)

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
            responses=ERROR_RESPONSES,
        )

    async def _predict(
        self, ctx: CallContext, typed: TypedSignature, pinned: bool, body: BaseModel
    ) -> Response:
        rows: list[dict[str, Any]] = [
            row.model_dump(by_alias=True) for row in getattr(body, "instances", [])
        ]

        async def rows_for(schema: TypedSignature) -> Callable[[], PredictRequest]:
            fitted = rows if schema is typed else self._revalidate(schema, rows)
            return lambda: schema.predict_request(fitted)

        return await self._answer(ctx, typed, pinned, rows_for)

    async def _predict_parsed(
        self,
        ctx: CallContext,
        typed: TypedSignature,
        pinned: bool,
        parsed: TypedBody,
        body: bytes,
        content_type: str | None,
    ) -> Response:
        """`_predict` for a body parsed in a worker (`parse_typed_body`)."""
        parsers = self._gateway.parsers

        async def rows_for(schema: TypedSignature) -> Callable[[], PredictRequest]:
            outcome = parsed
            if schema is not typed:
                # The routed version has other features: its worker call
                # validates the rows against them and builds its request.
                outcome = await parsers.run(
                    len(body),
                    parse_typed_body,
                    self._body_schema(typed),
                    body,
                    content_type,
                    self._body_schema(schema),
                )
                if outcome.refusal is not None:
                    raise UnprocessableInput(
                        outcome.refusal.message, outcome.refusal.detail or []
                    )
            return lambda: _request_of(outcome)

        return await self._answer(ctx, typed, pinned, rows_for)

    async def _answer(
        self,
        ctx: CallContext,
        typed: TypedSignature,
        pinned: bool,
        rows_for: Callable[[TypedSignature], Awaitable[Callable[[], PredictRequest]]],
    ) -> Response:
        gateway = self._gateway
        if pinned:
            plan = gateway.plan(ctx, typed.model, typed.version, None)
        else:
            plan = gateway.plan(ctx, typed.model, None, None)
        primary, schema = self._resolve(plan.primary, typed)
        build_request = await rows_for(schema)
        shadow = None
        if plan.shadow is not None:
            shadow_target, _ = self._resolve(plan.shadow, typed)
            shadow = shadow_target
        request = build_request()
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
        arrays = schema.output_arrays(response)
        return Response(
            await gateway.parsers.write_answer(
                output_elements(arrays),
                write_typed_answer,
                typed.model,
                version,
                list(schema.outputs),
                arrays,
            ),
            media_type=JSON,
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
                ROUTED_MISFIT, field_errors(exc.errors(), ("body", "instances"))
            ) from exc


def _request_of(parsed: TypedBody) -> PredictRequest:
    """The request a worker built, or the 400 its rows earned.

    Raises:
        InvalidInput: a value does not fit the tensor dtype.
    """
    if parsed.invalid is not None:
        raise InvalidInput(parsed.invalid)
    return PredictRequest.FromString(parsed.request)
