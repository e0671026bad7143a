"""Servers shared by the security tests of one session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.security.stack import Stack, serving_stack


@pytest.fixture(scope="session")
def listener_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The model server and the gateway with small listener limits
    (:mod:`tests.security.stack`), for the HTTP/1.1, body and admission tests."""
    with serving_stack(tmp_path_factory.mktemp("listeners")) as running:
        yield running
