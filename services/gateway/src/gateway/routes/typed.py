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
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from servekit_protocol import messages
from servekit_protocol.serving import DEFAULT_SIGNATURE
from starlette.responses import Response

from gateway.codecs.typed import (
    ERROR_RESPONSES,
    TypedSignature,
    build_typed_signature,
)
from gateway.context import CallContext
from gateway.dataplane import Gateway
from gateway.errors import ModelNotFound, UnprocessableInput
from gateway.forwarding import PredictCall
from gateway.routes.handling import authorize, json_response, serve_http
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
