"""One handler per TF Serving REST API, picked by the shared URL grammar.

The grammar is TF Serving's (``servekit_protocol.paths``, shared with the
gateway): anything else under ``/v1/`` is ``400 Malformed request: <METHOD>
<path>``, as in TF Serving. The handlers only decode, delegate to the dataplane
and encode.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NamedTuple

from servekit_protocol import json_codec, paths
from servekit_protocol.errors import InvalidArgument
from servekit_protocol.logs import bind_model

from modelserver.dataplane import DataPlane
from modelserver.errors import InvalidInput
from modelserver.protocol.rest import codec, examplebodies
from modelserver.types import (
    ClassifyRequest,
    ModelSpec,
    PredictRequest,
    RegressRequest,
)


def is_api_path(raw_path: str) -> bool:
    """Whether the API answers ``raw_path`` (400 when malformed); others are 404."""
    return paths.is_api_path(raw_path)


Handler = Callable[[ModelSpec, bytes], Awaitable[bytes]]


class Route(NamedTuple):
    """A matched request: which handler, for which model spec."""

    handler: Handler
    spec: ModelSpec
    api: str


_MATCH_CACHE_LIMIT = 4096


class Routes:
    """The REST handlers bound to a dataplane, and the table that picks one."""

    def __init__(
        self,
        dataplane: DataPlane,
        *,
        timeout: float | None,
        parsers: json_codec.BodyParsers,
    ) -> None:
        self._dataplane = dataplane
        self._timeout = timeout
        self._parsers = parsers
        self._post_handlers: dict[str, Handler] = {
            "predict": self.predict,
            "classify": self.classify,
            "regress": self.regress,
        }
        # Clients call few distinct URLs, so matched routes (immutable) are
        # remembered and the regular expressions run once per URL.
        self._matched: dict[tuple[str, str], Route] = {}

    def match(self, method: str, raw_path: str) -> Route:
        """Pick the handler for ``method`` and ``raw_path``.

        Raises:
            InvalidInput: The path or method is not part of the API (TF Serving
                answers these with INVALID_ARGUMENT, i.e. 400).
        """
        key = (method, raw_path)
        route = self._matched.get(key)
        if route is None:
            route = self._match(method, raw_path)
            if len(self._matched) >= _MATCH_CACHE_LIMIT:
                self._matched.clear()
            self._matched[key] = route
        return route

    def _match(self, method: str, raw_path: str) -> Route:
        try:
            parsed = paths.parse_path(method, raw_path)
        except InvalidArgument as exc:
            raise InvalidInput(exc.message) from exc
        spec = ModelSpec(name=parsed.model, version=parsed.version, label=parsed.label)
        handler = self._post_handlers.get(parsed.api)
        if handler is not None:
            return Route(handler, spec, parsed.api)
        if parsed.api == "metadata":
            return Route(self.metadata, spec, "metadata")
        return Route(self.status, spec, "status")

    async def predict(self, spec: ModelSpec, body: bytes) -> bytes:
        """``:predict`` with the row (``instances``) or columnar (``inputs``) format.

        Raises:
            ServingError: Anything the dataplane raises; ``InvalidInput`` for a
                malformed body.
        """
        spec, inputs, request_format = await codec.decode_predict(
            body,
            spec,
            self._dataplane.signature,
            self._parsers,
            self._dataplane.tensor_limits,
        )
        response = await self._dataplane.predict(
            PredictRequest(spec, inputs), protocol="rest", timeout=self._timeout
        )
        bind_model(response.spec.name, response.spec.version)
        return await codec.encode_predict(
            response.outputs, request_format, self._parsers
        )

    async def classify(self, spec: ModelSpec, body: bytes) -> bytes:
        """``:classify`` with ``examples`` (and optional ``context``).

        Raises:
            ServingError: Anything the dataplane raises.
        """
        signature_name, examples, context = await examplebodies.decode_examples(
            body, self._parsers, self._dataplane.tensor_limits
        )
        response = await self._dataplane.classify(
            ClassifyRequest(
                codec.with_signature(spec, signature_name), examples, context
            ),
            protocol="rest",
            timeout=self._timeout,
        )
        bind_model(response.spec.name, response.spec.version)
        return await codec.encode_classify(response.results, self._parsers)

    async def regress(self, spec: ModelSpec, body: bytes) -> bytes:
        """``:regress`` with ``examples`` (and optional ``context``).

        Raises:
            ServingError: Anything the dataplane raises.
        """
        signature_name, examples, context = await examplebodies.decode_examples(
            body, self._parsers, self._dataplane.tensor_limits
        )
        response = await self._dataplane.regress(
            RegressRequest(
                codec.with_signature(spec, signature_name), examples, context
            ),
            protocol="rest",
            timeout=self._timeout,
        )
        bind_model(response.spec.name, response.spec.version)
        return await codec.encode_regress(response.results, self._parsers)

    async def status(self, spec: ModelSpec, body: bytes) -> bytes:  # noqa: ARG002
        """``GET /v1/models/{m}[/versions/{v}]``: version states.

        Raises:
            ServingError: Anything the dataplane raises.
        """
        return codec.encode_status(await self._dataplane.status(spec, protocol="rest"))

    async def metadata(self, spec: ModelSpec, body: bytes) -> bytes:  # noqa: ARG002
        """``GET .../metadata``: the signature defs of the resolved version.

        Raises:
            ServingError: Anything the dataplane raises.
        """
        return codec.encode_metadata(
            await self._dataplane.metadata(spec, protocol="rest")
        )
