"""Where a load test's input schema comes from: a manifest, the registry, or the server.

In order: `SERVEKIT_MANIFEST` (a `servekit.json` file), `SERVEKIT_REGISTRY` (the
registry folder, read with `modelregistry`), else the metadata endpoint of the
protocol under test: `GET /v1/models/{m}/metadata` (rest), `GET /v2/models/{m}`
(v2, and typed, which only the gateway serves), or gRPC `GetModelMetadata` (in the
gRPC user module).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from payloads import (
    InputSchema,
    SchemaError,
    schema_from_manifest,
    schema_from_v1_metadata,
    schema_from_v2_metadata,
)
from settings import LoadSettings

METADATA_TIMEOUT_SECONDS = 10.0


def auth_headers(settings: LoadSettings) -> dict[str, str]:
    """Headers carrying the API key, when one is set."""
    if settings.api_key is None:
        return {}
    return {"Authorization": f"Bearer {settings.api_key}"}


def manifest_schema(settings: LoadSettings) -> InputSchema | None:
    """The schema from a manifest file or the registry; None when neither is set.

    Raises:
        SchemaError: the manifest cannot be read or lacks the signature.
    """
    if settings.manifest is not None:
        try:
            manifest = json.loads(settings.manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SchemaError(
                f"cannot read manifest {settings.manifest}: {exc}"
            ) from exc
        return schema_from_manifest(manifest, settings.signature)
    if settings.registry is not None:
        # Imported here: a locust image that is given manifests needs no registry code.
        from modelregistry import Registry, RegistryError

        registry = Registry(settings.registry)
        try:
            version = registry.resolve(settings.model, settings.version, settings.label)
            found = registry.manifest(settings.model, version)
        except RegistryError as exc:
            raise SchemaError(f"registry {settings.registry}: {exc}") from exc
        return schema_from_manifest(found.model_dump(mode="json"), settings.signature)
    return None


def _get_json(url: str, settings: LoadSettings) -> Mapping[str, Any]:
    request = urllib.request.Request(url, headers=auth_headers(settings))
    try:
        with urllib.request.urlopen(
            request, timeout=METADATA_TIMEOUT_SECONDS
        ) as response:
            body: Mapping[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode(errors="replace")
        raise SchemaError(f"GET {url}: HTTP {exc.code} {detail}") from exc
    except (OSError, ValueError) as exc:
        raise SchemaError(f"GET {url}: {exc}") from exc
    return body


def v1_model_path(settings: LoadSettings) -> str:
    """`/v1/models/{m}` with the version or label, as TF Serving's REST API spells it."""
    path = f"/v1/models/{settings.model}"
    if settings.version is not None:
        path += f"/versions/{settings.version}"
    elif settings.label is not None:
        path += f"/labels/{settings.label}"
    return path


def v2_model_path(settings: LoadSettings) -> str:
    """`/v2/models/{m}` with the version; the gateway takes a label in its place."""
    path = f"/v2/models/{settings.model}"
    if settings.version is not None:
        path += f"/versions/{settings.version}"
    elif settings.label is not None:
        path += f"/versions/{settings.label}"
    return path


def http_schema(settings: LoadSettings, host: str) -> InputSchema:
    """The schema from the server's HTTP metadata endpoint.

    Raises:
        SchemaError: the endpoint failed or its answer lacks the signature.
    """
    base = host.rstrip("/")
    # Typed endpoints exist on the gateway only, which also serves v2 metadata.
    if settings.protocol in ("v2", "typed"):
        return schema_from_v2_metadata(
            _get_json(base + v2_model_path(settings), settings)
        )
    body = _get_json(f"{base}{v1_model_path(settings)}/metadata", settings)
    return schema_from_v1_metadata(body, settings.signature)
