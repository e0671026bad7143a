"""API keys (401/403), per-key rate limits (429 + Retry-After), body limit (413),
gzip bodies."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.gateway import ApiKeys, GatewayProcess

pytestmark = pytest.mark.integration

ROW = {"instances": [{"a": 1.0, "b": 1.0}]}


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/linear:predict",
        "/v2/models/linear/infer",
        "/models/linear/predict",
    ],
)
def test_missing_or_unknown_key_is_401(gateway: GatewayProcess, path: str) -> None:
    body = (
        {"inputs": [{"name": "a", "shape": [1], "datatype": "FP64", "data": [1.0]}]}
        if path.startswith("/v2")
        else ROW
    )
    missing = httpx.post(gateway.url + path, json=body)
    assert missing.status_code == 401
    assert "error" in missing.json()
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = httpx.post(
        gateway.url + path, json=body, headers={"authorization": "Bearer sk_nope"}
    )
    assert wrong.status_code == 401


def test_key_out_of_scope_is_403(gateway: GatewayProcess, api_keys: ApiKeys) -> None:
    with gateway.client(api_keys.linear_only) as client:
        assert (
            client.post("/v1/models/linear/versions/1:predict", json=ROW).status_code
            == 200
        )
        denied = client.post("/v1/models/rollout:predict", json=ROW)
        assert denied.status_code == 403
        assert "rollout" in denied.json()["error"]
        assert client.get("/v1/models/rollout").status_code == 403
    bearer = httpx.get(
        f"{gateway.url}/v1/models/linear",
        headers={"authorization": f"Bearer {api_keys.linear_only}"},
    )
    assert bearer.status_code == 200


def test_rate_limit_is_429_with_retry_after(
    gateway: GatewayProcess,
    api_keys: ApiKeys,
    limited_rate: float,
    limited_burst: int,
) -> None:
    # The key's bucket is its own (no other test spends it) and a token takes
    # 1 / limited_rate = 20 s to come back, far longer than these calls take.
    started = time.monotonic()
    with gateway.client(api_keys.limited) as client:
        calls = limited_burst + 2
        codes = [client.get("/v1/models/linear").status_code for _ in range(calls)]
        assert codes == [200] * limited_burst + [429, 429]
        refused = client.get("/v1/models/linear")
        elapsed = time.monotonic() - started
        assert refused.status_code == 429
        # The wait until one token exists, in whole seconds rounded up: a full
        # refill, less what has trickled back since the burst was spent.
        refill = 1 / limited_rate
        assert refill - elapsed <= int(refused.headers["retry-after"]) <= refill
    # Other keys have their own buckets.
    with gateway.client(api_keys.admin) as client:
        assert client.get("/v1/models/linear").status_code == 200


def test_body_over_the_limit_is_413(
    client: httpx.Client, gateway_env: dict[str, str]
) -> None:
    limit = int(gateway_env["GATEWAY_MAX_BODY_BYTES"])
    rows = [{"a": 1.0, "b": 2.0}] * (limit // 10)
    for path in ("/v1/models/linear:predict", "/models/linear/predict"):
        declared = client.post(path, json={"instances": rows})
        assert declared.status_code == 413, path
        assert "limit" in declared.json()["error"]

    def chunks() -> Iterator[bytes]:
        # Streamed without Content-Length: the gateway counts while reading.
        yield b'{"instances": ['
        for _ in range(limit // 10):
            yield b'{"a": 1.0, "b": 2.0},'
        yield b'{"a": 1.0, "b": 2.0}]}'

    for path in ("/v1/models/linear:predict", "/models/linear/predict"):
        streamed = client.post(
            path, content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413, path


GZIP = {"content-encoding": "gzip", "content-type": "application/json"}
V2_ROW = {
    "inputs": [
        {"name": "a", "shape": [1], "datatype": "FP64", "data": [1.0]},
        {"name": "b", "shape": [1], "datatype": "FP64", "data": [2.0]},
    ]
}


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/models/linear/versions/1:predict", ROW),
        ("/v2/models/linear/versions/1/infer", V2_ROW),
        ("/models/linear/versions/1/predict", ROW),
    ],
)
def test_gzip_bodies_are_inflated(
    client: httpx.Client, path: str, body: dict[str, Any]
) -> None:
    plain = client.post(path, json=body)
    zipped = client.post(
        path, content=gzip.compress(json.dumps(body).encode()), headers=GZIP
    )
    assert plain.status_code == zipped.status_code == 200, zipped.text
    assert zipped.json() == plain.json()
    broken = client.post(
        path, content=gzip.compress(json.dumps(body).encode())[:-6], headers=GZIP
    )
    assert broken.status_code == 400, path
    assert "uncompress" in broken.json()["error"]


def test_the_limit_applies_to_the_inflated_body(
    client: httpx.Client, gateway_env: dict[str, str]
) -> None:
    limit = int(gateway_env["GATEWAY_MAX_BODY_BYTES"])
    rows = json.dumps({"instances": [{"a": 1.0, "b": 2.0}] * (limit // 10)})
    bomb = gzip.compress(rows.encode())
    assert len(bomb) < limit // 10
    for path in ("/v1/models/linear:predict", "/models/linear/predict"):
        answer = client.post(path, content=bomb, headers=GZIP)
        assert answer.status_code == 413, path
        assert "limit" in answer.json()["error"]
