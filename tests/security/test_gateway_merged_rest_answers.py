"""Merged REST v1 `:predict` answers are the bytes each caller gets unmerged.

Concurrent TF Serving REST bodies of one model are merged into one body for
the backend's REST API and its JSON answer cut back by rows
(``gateway.clients.restbatch``; in the JSON workers from
``--json-offload-bytes``). A gateway that merges and one that never does
(``--coalesce-max-rows=1``), in front of the same model server
(:mod:`tests.security.merging_stack`), must give callers of different sizes
the same status and bytes, and those bytes must be the model server's own
answer to each caller's body.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.security.merging_stack import (
    MergingGateways,
    concurrent_posts,
    gateway_flags,
    merged_calls,
    spread_instances,
)
from tests.security.stack import assert_no_traceback
from tests.support.gateway import GatewayProcess, running_gateway

pytestmark = pytest.mark.integration

PATH = "/v1/models/spread:predict"
CALLER_ROWS = (1, 3, 2, 1, 2, 1, 3, 2)
"""Rows of the eight callers sent while the first call is in flight: 15 in
all, under the default ``--coalesce-max-rows`` (32), so they go as one call;
each row's answer is about 1.3 MB of JSON."""
ROUNDS = 2
"""Rounds of concurrent calls: the callers merge in each one that finds the
first call in flight, so two make a merge all but certain; one is asserted."""


@pytest.fixture(scope="module")
def unmerged(
    merging: MergingGateways, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A gateway in front of the same model server that never merges."""
    with running_gateway(
        tmp_path_factory.mktemp("unmerged-gateway"),
        env={"GATEWAY_REGISTRY": str(merging.registry)},
        flags=[*gateway_flags(merging.server), "--coalesce-max-rows=1"],
    ) as gateway:
        yield gateway
        assert_no_traceback(gateway.process)


def _body(caller: int, rows: int) -> dict[str, Any]:
    """Caller ``caller``'s body: ``rows`` rows for the first, its own size
    (`CALLER_ROWS`) for the others."""
    return spread_instances(caller, CALLER_ROWS[caller - 1] if caller else rows)


def test_merged_rest_answers_are_the_unmerged_bytes_and_the_model_server_s(
    merging: MergingGateways, unmerged: GatewayProcess
) -> None:
    gateway = merging.offloading
    merges = merged_calls(gateway)
    for _ in range(ROUNDS):
        merged = concurrent_posts(gateway, PATH, _body)
        alone = concurrent_posts(unmerged, PATH, _body)
        assert [status for status, _ in merged] == [200] * len(merged), [
            content[:300] for _, content in merged
        ]
        for caller, (ours, theirs) in enumerate(zip(merged, alone, strict=True)):
            assert ours == theirs, f"caller {caller}: the answers differ"
    assert merged_calls(gateway) > merges, "the concurrent calls were not merged"
    assert merged_calls(unmerged) == 0
    for caller in range(1, len(merged)):
        direct = httpx.post(
            merging.server.rest_url + PATH, json=_body(caller, 0), timeout=120
        )
        assert direct.status_code == 200
        assert merged[caller][1] == direct.content, f"caller {caller}"
