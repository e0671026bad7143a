"""TF Serving's REST URL grammar, parsed and built the same way by both services.

The grammar is TF Serving's own (`http_rest_api_util.cc`): two case-insensitive
regular expressions matched against the raw (still percent-encoded) path, the
model name and label percent-decoded afterwards::

    POST /v1/models/{m}[/versions/{v}|/labels/{l}]:(predict|classify|regress)
    GET  /v1/models/{m}[/versions/{v}|/labels/{l}][/metadata]

Anything else under `/v1/` is `400 Malformed request: <METHOD> <path>`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

from servekit_protocol.errors import InvalidArgument

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

POST_APIS = frozenset({"predict", "classify", "regress"})
"""The verbs after the colon, as TF Serving dispatches them (lower case)."""

_INT64_MAX = 2**63 - 1
_INT64_DIGITS = len(str(_INT64_MAX))


@dataclass(frozen=True, slots=True)
class ModelPath:
    """A parsed v1 path: which model, version or label, and which API."""

    model: str
    version: int | None
    label: str | None
    api: str
    """`predict`, `classify`, `regress`, `metadata` or `status`."""


def is_api_path(raw_path: str) -> bool:
    """Whether the v1 API answers `raw_path` (400 when malformed); TF Serving's
    dispatcher takes every path matching `(?i)/v1/.*`."""
    return raw_path[:4].lower() == "/v1/"


def parse_path(method: str, raw_path: str) -> ModelPath:
    """The model, version or label and API a v1 request names.

    Raises:
        InvalidArgument: the path or method is not part of the API, a version
            beyond int64, or a GET without a model name (TF Serving's wording).
    """
    if method == "POST":
        match = PREDICTION_PATH.fullmatch(raw_path)
        if match is not None:
            name, version, label, verb = match.groups()
            if verb in POST_APIS:
                return _model_path(name, version, label, verb)
    elif method == "GET":
        match = MODEL_PATH.fullmatch(raw_path)
        if match is not None:
            name, version, label, subresource = match.groups()
            if not name:
                raise InvalidArgument("Missing model name in request.")
            return _model_path(
                name, version, label, "metadata" if subresource else "status"
            )
    raise InvalidArgument(f"Malformed request: {method} {raw_path}")


def _model_path(
    name: str, version: str | None, label: str | None, api: str
) -> ModelPath:
    number: int | None = None
    if version:
        # Checked by length first: int() refuses over 4,300 digits with its own
        # ValueError, and a longer string is never an int64 anyway.
        if len(version) > _INT64_DIGITS or int(version) > _INT64_MAX:
            shown = version if len(version) <= 32 else version[:32] + "..."
            raise InvalidArgument(f"Failed to convert version: {shown} to numeric.")
        number = int(version)
    if "%" in name:
        name = unquote(name)
    if label is not None and "%" in label:
        label = unquote(label)
    return ModelPath(name, number, label or None, api)


def model_path(
    model: str, version: int | None = None, label: str | None = None, api: str = ""
) -> str:
    """The v1 path of a request, e.g. `/v1/models/m/labels/canary:predict`; `api`
    is a POST verb, `metadata`, or empty (status)."""
    path = "/v1/models/" + quote(model, safe="")
    if version is not None:
        path += f"/versions/{version}"
    elif label is not None:
        path += "/labels/" + quote(label, safe="")
    if api in POST_APIS:
        return f"{path}:{api}"
    if api == "metadata":
        return path + "/metadata"
    return path
