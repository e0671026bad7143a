"""The app factory: build the gateway's parts from Settings and wire the HTTP routes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

import gateway as package
from gateway.clients.breaker import CircuitBreaker
from gateway.clients.pool import BackendPool, RetryPolicy
from gateway.codecs.typed_body import field_errors, summary
from gateway.dataplane import Gateway
from gateway.errors import GatewayError, UnprocessableInput
from gateway.observability.metrics import GatewayMetrics
from gateway.registryview import RegistryView
from gateway.reloader import Reloader
from gateway.routes.grpcweb import SERVICE_PREFIX, GrpcWebEndpoint
from gateway.routes.handling import (
    authenticate,
    json_response,
    read_body,
    reject,
    replay_body,
)
from gateway.routes.health import ReadinessCache, health_routes
from gateway.routes.typed import PROTOCOL as TYPED_PROTOCOL
from gateway.routes.typed import TypedEndpoints
from gateway.routes.v1 import (
    V1_PREFIX,
    get_model,
    is_v1_path,
    other_method,
    post_model,
    v1_routes,
)
from gateway.routes.v2 import v2_routes
from gateway.routing.config import RoutesConfig
from gateway.routing.router import Router
from gateway.security.keys import Authenticator, RateSpec
from gateway.settings import Settings

TYPED_PREFIX = "/models/"
"""Where the typed per-model endpoints live."""


class GatewayApp(FastAPI):
    """FastAPI for the documented parts (typed endpoints, `/docs`), with the hot
    paths (v1, v2, health) dispatched straight to their Starlette handlers.

    The v1/v2 handlers parse with orjson and never raise; skipping FastAPI's
    middleware stack and the scan of every route saves a noticeable share of the
    per-request CPU that the gateway adds in front of a model server.
    """

    gateway: Gateway
    fast_routes: list[Route]
    v1_endpoints: dict[str, Callable[[Request], Awaitable[Response]]]
    max_body_bytes: int
    grpc_web: GrpcWebEndpoint
    typed_endpoints: TypedEndpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if is_v1_path(path):
                # The busiest path: TF Serving's verbs follow a colon, so the v1
                # routes are catch-alls; a prefix test spares their regexes. Every
                # path under /v1/ is the API's, answered 400 when malformed (no
                # redirect, 404 or 405), as TF Serving answers.
                endpoint = self.v1_endpoints.get(scope["method"], other_method)
                scope["path_params"] = {"rest": path[len(V1_PREFIX) :]}
                await self._dispatch(endpoint, scope, receive, send)
                return
            if path.startswith(SERVICE_PREFIX) and scope["method"] == "POST":
                await self.grpc_web(scope, receive, send)
                return
            for route in self.fast_routes:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child_scope)
                    await self._dispatch(route.endpoint, scope, receive, send)
                    return
            if scope["method"] in ("POST", "PUT", "PATCH"):
                # FastAPI reads bodies without a limit and leaves gzip deflated: read it
                # here, with ours.
                scope["app"] = self
                request = Request(scope, receive)
                try:
                    if path.startswith(TYPED_PREFIX):
                        # A typed model endpoint: the key is checked from the
                        # headers before the body is read.
                        authenticate(self.gateway, scope)
                    body = await read_body(request, self.max_body_bytes)
                except GatewayError as exc:
                    response = reject(request, TYPED_PROTOCOL, exc)
                    await response(scope, receive, send)
                    return
                if (
                    path.startswith(TYPED_PREFIX)
                    and len(body) >= self.gateway.parsers.threshold_bytes
                ):
                    # FastAPI would parse and validate it on the event loop.
                    typed = self.typed_endpoints.large_body_target(scope)
                    if typed is not None:
                        response = await self.typed_endpoints.serve_large_body(
                            request, body, *typed
                        )
                        await response(scope, receive, send)
                        return
                receive = replay_body(body, receive)
        await super().__call__(scope, receive, send)

    async def _dispatch(
        self,
        endpoint: Callable[[Request], Awaitable[Response]],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        scope["app"] = self
        response = await endpoint(Request(scope, receive))
        await response(scope, receive, send)


def build_gateway(settings: Settings, metrics: GatewayMetrics | None = None) -> Gateway:
    """Assemble the dataplane (files are loaded by the Reloader, see create_app)."""
    metrics = metrics if metrics is not None else GatewayMetrics()
    registry = (
        RegistryView(settings.registry) if settings.registry is not None else None
    )
    framework_backend_of = None
    if registry is not None and settings.framework_backends:
        backends = dict(settings.framework_backends)
        view = registry

        def framework_backend_of(model: str) -> str | None:
            framework = view.framework(model)
            return backends.get(framework) if framework is not None else None

    router = Router(
        RoutesConfig(),
        settings.default_backend,
        labels_of=registry.labels if registry is not None else None,
        framework_backend_of=framework_backend_of,
    )
    default_rate = (
        RateSpec(
            per_second=settings.rate_limit_per_second,
            burst=settings.rate_limit_burst or None,
        )
        if settings.rate_limit_per_second > 0
        else None
    )
    authenticator = Authenticator(
        enabled=settings.auth_enabled, default_rate=default_rate
    )
    pool = BackendPool(
        metrics,
        RetryPolicy(settings.retries, settings.retry_backoff_ms / 1000.0),
        lambda: CircuitBreaker(
            settings.breaker_failures, settings.breaker_reset_seconds
        ),
        settings.rest_backends,
        grpc_web=settings.backend_grpc_web,
        max_answer_bytes=settings.backend_max_answer_bytes,
        h2_max_answer_bytes=(
            settings.backend_max_answer_bytes
            if settings.backend_grpc_client == "h2"
            else None
        ),
    )
    metrics.known_model = lambda model: router.route_of(model) is not None
    return Gateway(settings, metrics, router, pool, authenticator, registry)


def build_reloader(gateway: Gateway) -> Reloader:
    settings = gateway.settings
    return Reloader(
        gateway.router,
        gateway.authenticator,
        gateway.metrics,
        settings.resolved_routes_file(),
        settings.api_keys_file,
        gateway.registry,
        settings.reload_interval_seconds,
    )


def create_app(settings: Settings, gateway: Gateway | None = None) -> GatewayApp:
    """The HTTP app. Without `gateway`, one is built and closed with the app.

    Raises:
        RoutesFileError, KeysFileError: the routes or keys file is invalid.
    """
    owns_gateway = gateway is None
    gw = gateway if gateway is not None else build_gateway(settings)
    reloader = build_reloader(gw)
    reloader.load_initial()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        reloader.start()
        try:
            yield
        finally:
            await reloader.stop()
            if owns_gateway:
                await gw.close()

    app = GatewayApp(
        title="servekit gateway",
        version=package.__version__,
        description=(
            "TF Serving's REST API (`/v1`), the Open Inference Protocol (`/v2`), "
            "typed per-model endpoints generated from the registry manifests "
            "(`/models/{model}/predict`), health and metrics. gRPC "
            "(`tensorflow.serving.PredictionService`, `ModelService`) is served on "
            "its own port, and as gRPC-Web on this one "
            "(`POST /tensorflow.serving.<Service>/<Method>`)."
        ),
        lifespan=lifespan,
        # No OpenTelemetry per request; Prometheus metrics cover the gateway.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.gateway = gw

    @app.exception_handler(RequestValidationError)
    async def on_invalid_body(
        request: Request, exc: RequestValidationError
    ) -> Response:
        # FastAPI's locations start with "body" already.
        errors = field_errors(list(exc.errors()), ())
        return reject(
            request, TYPED_PROTOCOL, UnprocessableInput(summary(errors), errors)
        )

    @app.exception_handler(GatewayError)
    async def on_gateway_error(request: Request, exc: GatewayError) -> Response:
        return reject(request, TYPED_PROTOCOL, exc)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        # Routing and body-parsing refusals (404, 405, a body that is not JSON)
        # answer TF Serving's error body too, as every other error does.
        return json_response(
            {"error": str(exc.detail)},
            exc.status_code,
            headers=dict(exc.headers) if exc.headers else None,
        )

    app.state.readiness = ReadinessCache(gw)
    app.state.reloader = reloader
    # v1 first: the busiest path is matched first.
    fast_routes = [*v1_routes(), *v2_routes(), *health_routes()]
    app.fast_routes = fast_routes
    app.v1_endpoints = {"GET": get_model, "POST": post_model}
    app.max_body_bytes = settings.max_body_bytes
    app.grpc_web = GrpcWebEndpoint(gw, settings.max_body_bytes)
    # Also on the regular router, which answers 405 for a wrong method.
    app.router.routes.extend(fast_routes)
    typed = TypedEndpoints(app, gw)
    app.state.typed_endpoints = typed
    app.typed_endpoints = typed
    typed.rebuild()
    if gw.registry is not None:
        reloader.on_registry_change(gw.registry.forget_frameworks)
    reloader.on_registry_change(typed.rebuild)
    return app
