from __future__ import annotations

import grpc
import pytest
from gateway import errors
from gateway.errors import BackendError, GatewayError, RateLimited
from servekit_protocol.grpc_codes import to_grpc
from servekit_protocol.status import HTTP_STATUS_FOR_CODE, Code, agrees


def subclasses(cls: type[GatewayError]) -> list[type[GatewayError]]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(subclasses(sub))
    return found


@pytest.mark.parametrize(
    "error_class",
    [
        c
        for c in subclasses(GatewayError)
        if c not in (BackendError, RateLimited, errors.UnprocessableInput)
    ],
)
def test_every_error_has_its_codes_status_from_the_one_table(
    error_class: type[GatewayError],
) -> None:
    error = error_class("boom")
    assert error.grpc_code is to_grpc(error_class.code)
    assert agrees(error_class.code, error.http_status)
    if error.http_status not in (413, 422):
        assert HTTP_STATUS_FOR_CODE[error_class.code] == error.http_status


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (errors.ModelNotFound("x"), 404, grpc.StatusCode.NOT_FOUND),
        (errors.Overloaded("x"), 503, grpc.StatusCode.UNAVAILABLE),
        (errors.DeadlineExceeded("x"), 504, grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.Unauthenticated("x"), 401, grpc.StatusCode.UNAUTHENTICATED),
        (errors.PayloadTooLarge("x"), 413, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.UnprocessableInput("x", []), 422, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_key_mappings(error: GatewayError, status: int, code: grpc.StatusCode) -> None:
    assert (error.http_status, error.grpc_code) == (status, code)


def test_an_http_status_off_the_table_is_refused_at_class_definition() -> None:
    with pytest.raises(TypeError, match="412"):

        class Precondition(GatewayError):
            code = Code.FAILED_PRECONDITION
            status = 412


def test_backend_errors_keep_their_code_and_map_like_tf_serving() -> None:
    error = BackendError("Servable not found", grpc.StatusCode.NOT_FOUND)
    assert (error.http_status, error.grpc_code) == (404, grpc.StatusCode.NOT_FOUND)
    precondition = BackendError("x", grpc.StatusCode.FAILED_PRECONDITION)
    assert precondition.http_status == 400
    assert BackendError("x", grpc.StatusCode.CANCELLED).http_status == 499


def test_retry_after_rounds_up_to_whole_seconds() -> None:
    assert RateLimited("slow down", 0.2).headers() == {"Retry-After": "1"}
    assert RateLimited("slow down", 2.01).headers() == {"Retry-After": "3"}
    assert RateLimited("x", 1.0).grpc_code is grpc.StatusCode.RESOURCE_EXHAUSTED
