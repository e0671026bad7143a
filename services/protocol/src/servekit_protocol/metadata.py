"""GetModelMetadata's payload: a SignatureDefMap packed in a protobuf Any.

TF Serving packs the map with the type URL of *its* message name; ours lives in
another proto package, so packing sets the URL by hand, which is what lets the
official client ``Unpack`` it into ``tensorflow.serving.SignatureDefMap``.
"""

from __future__ import annotations

from google.protobuf.any_pb2 import Any as AnyProto

from servekit_protocol.errors import InvalidArgument
from servekit_protocol.messages import SignatureDefMap

SIGNATURE_DEF_MAP_TYPE_URL = "type.googleapis.com/tensorflow.serving.SignatureDefMap"
# The only metadata field TF Serving knows (GetModelMetadataRequest.metadata_field).
SIGNATURE_DEF_FIELD = "signature_def"

_ACCEPTED_TYPE_NAMES = frozenset(
    {"tensorflow.serving.SignatureDefMap", SignatureDefMap.DESCRIPTOR.full_name}
)


def pack_signature_def_map(
    signature_def_map: SignatureDefMap, into: AnyProto | None = None
) -> AnyProto:
    """Pack the map with TF Serving's type URL, into ``into`` if given."""
    packed = into if into is not None else AnyProto()
    packed.type_url = SIGNATURE_DEF_MAP_TYPE_URL
    # Deterministic bytes make responses cacheable and comparable.
    packed.value = signature_def_map.SerializeToString(deterministic=True)
    return packed


def unpack_signature_def_map(packed: AnyProto) -> SignatureDefMap:
    """Decode a SignatureDefMap packed by TF Serving or by pack_signature_def_map.

    Raises:
        InvalidArgument: the Any holds another message type.
    """
    type_name = packed.type_url.rpartition("/")[2]
    if type_name not in _ACCEPTED_TYPE_NAMES:
        raise InvalidArgument(
            f"Expected a SignatureDefMap in the metadata, got {packed.type_url!r}"
        )
    return SignatureDefMap.FromString(packed.value)


__all__ = [
    "SIGNATURE_DEF_FIELD",
    "SIGNATURE_DEF_MAP_TYPE_URL",
    "pack_signature_def_map",
    "unpack_signature_def_map",
]
