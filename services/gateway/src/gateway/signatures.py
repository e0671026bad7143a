"""The signature cache: each routed target's signature defs, fetched from its
backend by GetModelMetadata and kept so that JSON requests can be typed without a
metadata call per request.

A target pinned to a version never changes and is kept until evicted; one that
follows the latest version or a label expires after `metadata_ttl_seconds`, and is
dropped at once when an answer shows another version served it. Concurrent
misses for one target share a single fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from servekit_protocol import json_codec, messages
from servekit_protocol.errors import ProtocolError
from servekit_protocol.serving import DEFAULT_SIGNATURE
from servekit_protocol.tensors import numpy_dtype

from gateway.clients.backend import BackendClient
from gateway.context import CallContext, apply_target
from gateway.errors import InvalidInput
from gateway.routing.router import Target

MAX_ENTRIES = 4096
"""Targets kept before the cache starts again from empty (routes are few; this
only bounds what clients naming many versions can make it hold)."""


@dataclass(frozen=True, slots=True)
class SignatureSet:
    """A model version's signature defs, as its backend reported them."""

    model: str
    version: int | None
    signatures: Mapping[str, messages.SignatureDef]
    pinned: bool
    """True when fetched for an explicit version (immutable, never expires)."""
    specs: dict[str, Mapping[str, json_codec.TensorSpec]] = field(
        default_factory=dict, compare=False, repr=False
    )
    """Per signature, the JSON codec's input specs (built once, on first use)."""

    def get(self, name: str) -> messages.SignatureDef:
        """The named signature (empty name: `serving_default`).

        Raises:
            InvalidInput: no such signature, in TF Serving's words
                (`http_rest_api_handler.cc` GetInfoMap).
        """
        key = name or DEFAULT_SIGNATURE
        signature = self.signatures.get(key)
        if signature is None:
            raise InvalidInput(
                f'Serving signature name: "{key}" not found in signature def'
            )
        return signature

    def input_specs(self, name: str) -> Mapping[str, json_codec.TensorSpec]:
        """The codec's view of a signature's inputs: dtypes only.

        Shapes are left to the model, as TF Serving and the model server leave
        them to the graph: signatures often declare shapes their graphs do not
        enforce (TF Serving's own `half_plus_two` declares `[-1, 1]` and
        answers `{"instances": [1.0, 2.0, 5.0]}`).

        Raises:
            InvalidInput: no such signature.
        """
        specs = self.specs.get(name)
        if specs is None:
            specs = {
                key: json_codec.TensorSpec(spec.dtype, None)
                for key, spec in json_codec.specs_from_tensor_infos(
                    self.get(name).inputs
                ).items()
            }
            self.specs[name] = specs
        return specs

    def input_dtypes(self, name: str) -> dict[str, np.dtype[Any]]:
        """Numpy dtypes of a signature's inputs, for converting client data."""
        signature = self.signatures.get(name or DEFAULT_SIGNATURE)
        if signature is None:
            return {}
        dtypes: dict[str, np.dtype[Any]] = {}
        for key, info in signature.inputs.items():
            with contextlib.suppress(ProtocolError):
                dtypes[key] = numpy_dtype(info.dtype)
        return dtypes


@dataclass(slots=True)
class _Entry:
    value: SignatureSet
    expires: float


def _key(target: Target) -> tuple[Any, ...]:
    return (target.backends, target.model, target.version, target.label)


class SignatureCache:
    """Signature sets per target, fetched through `client`.

    Args:
        client: calls GetModelMetadata on the target's backends.
        ttl_seconds: how long an unpinned target's signatures are trusted.
    """

    def __init__(self, client: BackendClient, ttl_seconds: float) -> None:
        self._client = client
        self._ttl_seconds = ttl_seconds
        self._entries: dict[tuple[Any, ...], _Entry] = {}
        self._pending: dict[tuple[Any, ...], asyncio.Future[SignatureSet]] = {}

    async def get(self, target: Target, ctx: CallContext) -> SignatureSet:
        """The target's signatures, from cache when possible (one fetch at a time).

        Raises:
            GatewayError: the backend could not tell (404 unknown model, 503 ...).
        """
        key = _key(target)
        entry = self._entries.get(key)
        now = time.monotonic()
        if entry is not None and (entry.value.pinned or entry.expires > now):
            return entry.value
        while (pending := self._pending.get(key)) is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not pending.cancelled() or (task is not None and task.cancelling()):
                    raise
                # The request that was fetching went away; fetch for ourselves.
        future: asyncio.Future[SignatureSet] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending[key] = future
        try:
            value = await self._fetch(target, ctx)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            # Nobody else may be waiting; retrieving marks the exception as seen.
            future.exception()
            raise
        finally:
            del self._pending[key]
        if len(self._entries) > MAX_ENTRIES:
            self._entries.clear()
        self._entries[key] = _Entry(value, now + self._ttl_seconds)
        future.set_result(value)
        return value

    def forget(self, target: Target) -> None:
        """Drop the target's entry: the next request fetches again."""
        self._entries.pop(_key(target), None)

    async def _fetch(self, target: Target, ctx: CallContext) -> SignatureSet:
        request = messages.GetModelMetadataRequest()
        apply_target(request.model_spec, target)
        request.metadata_field.append("signature_def")
        response = await self._client.model_metadata(
            target.backends, request, ctx.deadline, ctx.metadata()
        )
        signature_map = messages.SignatureDefMap()
        packed = response.metadata.get("signature_def")
        if packed is not None:
            # The type URL names tensorflow.serving.SignatureDefMap; the bytes are
            # the same as ours, so parse them directly.
            signature_map.ParseFromString(packed.value)
        version = (
            response.model_spec.version.value
            if response.model_spec.HasField("version")
            else target.version
        )
        return SignatureSet(
            model=target.model,
            version=version,
            signatures=dict(signature_map.signature_def),
            pinned=target.version is not None,
        )
