from __future__ import annotations

import grpc
import pytest
from gateway import errors
from gateway.errors import (
    GRPC_TO_HTTP,
    HTTP_TO_GRPC,
    BackendError,
    GatewayError,
    RateLimited,
)


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
def test_every_error_has_a_grpc_code_from_the_one_table(
    error_class: type[GatewayError],
) -> None:
    error = error_class("boom")
    assert error.grpc_code is HTTP_TO_GRPC[error.http_status]
    # The table agrees in both directions wherever the mapping is one-to-one.
    if error.http_status not in (413, 422, 429):
        assert GRPC_TO_HTTP[error.grpc_code] == error.http_status


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (404, grpc.StatusCode.NOT_FOUND),
        (503, grpc.StatusCode.UNAVAILABLE),
        (504, grpc.StatusCode.DEADLINE_EXCEEDED),
        (401, grpc.StatusCode.UNAUTHENTICATED),
    ],
)
def test_key_mappings(status: int, code: grpc.StatusCode) -> None:
    assert HTTP_TO_GRPC[status] is code


def test_backend_errors_keep_their_code_and_map_like_tf_serving() -> None:
    error = BackendError("Servable not found", grpc.StatusCode.NOT_FOUND)
    assert (error.http_status, error.grpc_code) == (404, grpc.StatusCode.NOT_FOUND)
    precondition = BackendError("x", grpc.StatusCode.FAILED_PRECONDITION)
    assert precondition.http_status == 412


def test_retry_after_rounds_up_to_whole_seconds() -> None:
    assert RateLimited("slow down", 0.2).headers() == {"Retry-After": "1"}
    assert RateLimited("slow down", 2.01).headers() == {"Retry-After": "3"}
    assert RateLimited("x", 1.0).grpc_code is grpc.StatusCode.RESOURCE_EXHAUSTED
