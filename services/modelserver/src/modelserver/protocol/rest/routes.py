"""TF Serving's REST URL grammar and one handler per API.

The route table is TF Serving's own (``http_rest_api_util.cc``): two
case-insensitive regular expressions matched against the raw (still
percent-encoded) path, model names and labels percent-decoded afterwards::

    POST /v1/models/{m}[/versions/{v}|/labels/{l}]:(predict|classify|regress)
    GET  /v1/models/{m}[/versions/{v}|/labels/{l}][/metadata]

Anything else under ``/v1/`` is ``400 Malformed request: <METHOD> <path>``, as in
TF Serving. The handlers only decode, delegate to the dataplane and encode.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import NamedTuple
from urllib.parse import unquote

from modelserver.dataplane import DataPlane
from modelserver.errors import InvalidInput
from modelserver.observability.logging import bind_model
from modelserver.protocol.rest import codec
from modelserver.types import (
    ClassifyRequest,
    ModelSpec,
    PredictRequest,
    RegressRequest,
)

PREDICTION_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r":(classify|regress|predict)",
    re.IGNORECASE | re.ASCII,
)
MODEL_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r"(?:/(metadata))?",
    re.IGNORECASE | re.ASCII,
)


def is_api_path(raw_path: str) -> bool:
    """Whether the API answers ``raw_path`` (400 when malformed); others are 404.

    TF Serving's dispatcher takes every path matching ``(?i)/v1/.*``.
    """
    return raw_path[:4].lower() == "/v1/"


_INT64_MAX = 2**63 - 1
_INT64_DIGITS = len(str(_INT64_MAX))

Handler = Callable[[ModelSpec, bytes], Awaitable[bytes]]


class Route(NamedTuple):
    """A matched request: which handler, for which model spec."""

    handler: Handler
    spec: ModelSpec
    api: str


_MATCH_CACHE_LIMIT = 4096


class Routes:
    """The REST handlers bound to a dataplane, and the table that picks one."""

    def __init__(self, dataplane: DataPlane, *, timeout: float | None) -> None:
        self._dataplane = dataplane
        self._timeout = timeout
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
        if method == "POST":
            match = PREDICTION_PATH.fullmatch(raw_path)
            if match is not None:
                name, version, label, verb = match.groups()
                handler = self._post_handlers.get(verb)
                if handler is not None:
                    return Route(handler, _model_spec(name, version, label), verb)
        elif method == "GET":
            match = MODEL_PATH.fullmatch(raw_path)
            if match is not None:
                name, version, label, subresource = match.groups()
                if not name:
                    raise InvalidInput("Missing model name in request.")
                spec = _model_spec(name, version, label)
                if subresource == "metadata":
                    return Route(self.metadata, spec, "metadata")
                return Route(self.status, spec, "status")
        raise InvalidInput(f"Malformed request: {method} {raw_path}")

    async def predict(self, spec: ModelSpec, body: bytes) -> bytes:
        """``:predict`` with the row (``instances``) or columnar (``inputs``) format.

        Raises:
            ServingError: Anything the dataplane raises; ``InvalidInput`` for a
                malformed body.
        """
        spec, inputs, request_format = await codec.decode_predict(
            body, spec, self._dataplane.signature, self._dataplane.tensor_limits
        )
        response = await self._dataplane.predict(
            PredictRequest(spec, inputs), protocol="rest", timeout=self._timeout
        )
        bind_model(response.spec.name, response.spec.version)
        return codec.encode_predict(response.outputs, request_format)

    async def classify(self, spec: ModelSpec, body: bytes) -> bytes:
        """``:classify`` with ``examples`` (and optional ``context``).

        Raises:
            ServingError: Anything the dataplane raises.
        """
        signature_name, examples, context = codec.decode_examples(body)
        response = await self._dataplane.classify(
            ClassifyRequest(
                codec.with_signature(spec, signature_name), examples, context
            ),
            protocol="rest",
            timeout=self._timeout,
        )
        bind_model(response.spec.name, response.spec.version)
        return codec.encode_classify(response.results)

    async def regress(self, spec: ModelSpec, body: bytes) -> bytes:
        """``:regress`` with ``examples`` (and optional ``context``).

        Raises:
            ServingError: Anything the dataplane raises.
        """
        signature_name, examples, context = codec.decode_examples(body)
        response = await self._dataplane.regress(
            RegressRequest(
                codec.with_signature(spec, signature_name), examples, context
            ),
            protocol="rest",
            timeout=self._timeout,
        )
        bind_model(response.spec.name, response.spec.version)
        return codec.encode_regress(response.results)

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


def _model_spec(name: str, version: str | None, label: str | None) -> ModelSpec:
    number: int | None = None
    if version:
        # Checked by length first: int() refuses over 4,300 digits with its own
        # ValueError, and a longer string is never an int64 anyway.
        if len(version) > _INT64_DIGITS or int(version) > _INT64_MAX:
            shown = version if len(version) <= 32 else version[:32] + "..."
            raise InvalidInput(f"Failed to convert version: {shown} to numeric.")
        number = int(version)
    if "%" in name:
        name = unquote(name)
    if label is not None and "%" in label:
        label = unquote(label)
    return ModelSpec(name=name, version=number, label=label or None)
