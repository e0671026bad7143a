"""TF Serving's gRPC code -> HTTP status table, as `ToHTTPStatusCode` writes it."""

from __future__ import annotations

import grpc
import pytest
from servekit_protocol.grpc_codes import from_grpc, to_grpc
from servekit_protocol.status import (
    HTTP_REFINEMENTS,
    HTTP_STATUS_FOR_CODE,
    Code,
    agrees,
    code_name,
    http_status,
)

# tensorflow_serving/model_servers/http_server.cc, ToHTTPStatusCode, case by case.
TF_SERVING = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}


@pytest.mark.parametrize("status", list(grpc.StatusCode), ids=lambda s: s.name)
def test_every_grpc_code_has_tf_servings_http_status(status: grpc.StatusCode) -> None:
    code = from_grpc(status)
    assert code.name == status.name
    assert int(code) == status.value[0]
    assert to_grpc(code) is status
    assert HTTP_STATUS_FOR_CODE[code] == TF_SERVING[status.name]
    assert http_status(int(code)) == TF_SERVING[status.name]


def test_codes_outside_the_table_are_500_and_unknown() -> None:
    assert http_status(99) == 500
    assert code_name(99) == "UNKNOWN"
    assert code_name(5) == "NOT_FOUND"


def test_refinements_are_http_only_statuses_of_the_tables_codes() -> None:
    assert set(HTTP_REFINEMENTS) == {413, 422}
    assert not set(HTTP_REFINEMENTS) & set(HTTP_STATUS_FOR_CODE.values())
    assert agrees(Code.RESOURCE_EXHAUSTED, 413)
    assert agrees(Code.RESOURCE_EXHAUSTED, 429)
    assert not agrees(Code.FAILED_PRECONDITION, 412)
    assert not agrees(Code.CANCELLED, 400)
