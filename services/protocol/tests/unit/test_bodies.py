"""gzip request bodies: inflated under the size limit."""

from __future__ import annotations

import gzip

import pytest
from servekit_protocol.bodies import BodyTooLarge, gunzip, is_gzip
from servekit_protocol.errors import InvalidArgument


def test_a_gzip_body_inflates_to_its_bytes() -> None:
    body = b'{"instances": [1.0, 2.0]}'
    assert gunzip(gzip.compress(body), limit=len(body)) == body


def test_the_limit_applies_to_the_inflated_size() -> None:
    body = b"0" * 10_000
    small = gzip.compress(body)
    assert len(small) < 100
    with pytest.raises(BodyTooLarge, match="limit of 9999 bytes") as raised:
        gunzip(small, limit=9_999)
    assert raised.value.status == 413


@pytest.mark.parametrize(
    "body",
    [b'{"instances": [1.0]}', gzip.compress(b'{"instances": [1.0]}')[:-6]],
    ids=["not gzip", "truncated"],
)
def test_a_body_that_does_not_inflate_is_invalid(body: bytes) -> None:
    with pytest.raises(InvalidArgument, match="Failed to uncompress") as raised:
        gunzip(body, limit=1_000)
    assert raised.value.status == 400


@pytest.mark.parametrize(
    "value, expected",
    [(b"gzip", True), (b"GZip", True), (b"x-gzip", True), (b"identity", False)],
)
def test_content_encodings_that_name_gzip(value: bytes, expected: bool) -> None:
    assert is_gzip(value) is expected
