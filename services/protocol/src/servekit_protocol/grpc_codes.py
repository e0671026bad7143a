"""`status.Code` <-> `grpc.StatusCode`, for the gRPC adapters only.

The error trees name codes with `status.Code` so that they do not import grpc;
the servers and clients that speak gRPC convert at their edge.
"""

from __future__ import annotations

import grpc

from servekit_protocol.status import Code

_GRPC_FOR_CODE: dict[Code, grpc.StatusCode] = {
    Code(status.value[0]): status for status in grpc.StatusCode
}
_CODE_FOR_GRPC: dict[grpc.StatusCode, Code] = {
    status: code for code, status in _GRPC_FOR_CODE.items()
}


def to_grpc(code: Code) -> grpc.StatusCode:
    """The grpc library's member for a code."""
    return _GRPC_FOR_CODE[code]


def from_grpc(status: grpc.StatusCode) -> Code:
    """The code of a grpc library status."""
    return _CODE_FOR_GRPC[status]
