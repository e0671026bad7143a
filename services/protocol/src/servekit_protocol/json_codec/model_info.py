"""Model status and metadata answers (``GET /v1/models/...``) as TF Serving writes
them."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from servekit_protocol.json_codec.document import dumps
from servekit_protocol.messages import GetModelMetadataResponse, GetModelStatusResponse
from servekit_protocol.metadata import unpack_signature_def_map


def _message_dict(message: Any) -> dict[str, Any]:
    result: dict[str, Any] = json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    return result


_SIGNATURE_MAPS = ("inputs", "outputs", "defaults")
"""The map fields of a SignatureDef."""


def _by_key(entries: dict[str, Any]) -> dict[str, Any]:
    return {key: entries[key] for key in sorted(entries)}


def _signature_map_dict(packed: Any) -> dict[str, Any]:
    """A packed SignatureDefMap as JSON, every map in key order: protobuf maps
    iterate in a different order in every process, so two replicas would
    otherwise describe the same model differently."""
    document = _message_dict(unpack_signature_def_map(packed))
    signatures = _by_key(document.get("signature_def", {}))
    for signature in signatures.values():
        for field in _SIGNATURE_MAPS:
            if field in signature:
                signature[field] = _by_key(signature[field])
    document["signature_def"] = signatures
    return document


def format_metadata_response(response: GetModelMetadataResponse) -> bytes:
    """TF Serving's GET .../metadata body: the SignatureDefMap unpacked to JSON,
    signatures and tensors in name order."""
    document: dict[str, Any] = {"model_spec": _message_dict(response.model_spec)}
    metadata: dict[str, Any] = {}
    for key in sorted(response.metadata):
        metadata[key] = _signature_map_dict(response.metadata[key])
    document["metadata"] = metadata
    return dumps(document)


def format_status_response(response: GetModelStatusResponse) -> bytes:
    """TF Serving's GET /v1/models/{m}[/versions/{v}] body.

    A version without a status is shown with TF Serving's OK status, which
    that server always writes.
    """
    if any(not entry.HasField("status") for entry in response.model_version_status):
        complete = GetModelStatusResponse()
        complete.CopyFrom(response)
        for entry in complete.model_version_status:
            entry.status.SetInParent()
        response = complete
    return dumps(_message_dict(response))
