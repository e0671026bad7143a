"""Three gateways in front of one model server, for the tests of large gRPC
messages the gateway forwards without parsing them whole
(``test_gateway_large_grpc``, ``test_gateway_large_examples``).

One gateway forwards large messages over gRPC-Web to the backend's REST port
(the default with ``--rest-backends``), one over gRPC (``--backend-grpc-web
false``), and one parses every message whole (``--grpc-parse-offload-bytes
0``). The first and the last reach the backend's REST port through a relay
that records what they send. The registry holds ``wide`` (256 float64
inputs), ``linear`` (regression on ``a`` and ``b``), ``classifier`` (ten
classes on ``a`` and ``b``, versions 1 and 2) and ``mirrored`` (two equal
versions, the canary label shadowing the stable one).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
from modelregistry import Registry
from modelregistry.layout import SERVEKIT_CONFIG_FILE
from servekit_protocol import grpcweb

from tests.security.recording import PREDICT, Recorder, recording_relay
from tests.security.stack import assert_no_traceback
from tests.security.test_large_grpc import publish_wide_model
from tests.support.gateway import GatewayProcess, running_gateway
from tests.support.models import publish_linear_pipeline
from tests.support.modelserver import model_server
from tests.support.pipelines import publish_classifier

BODY_LIMIT = 16 * 1024 * 1024
"""The gateways' body limit: the default."""
ROUTES = {
    "routes": {
        "mirrored": {
            "stable": "stable",
            "canary": {"label": "canary", "weight": 1.0},
            "shadow": True,
        }
    }
}
"""``mirrored`` answers from its stable version and shadows every call to its
canary (label) version."""
TENSOR_ELEMENTS_LIMIT = 3_000_000
"""The gateways' limit on a request's tensor elements: above the large
requests' 2,048,000, under what 15.6 MiB of FP32 holds."""


@dataclass(frozen=True)
class Gateways:
    forwarding: GatewayProcess
    """Default threshold; gRPC-Web to the backend."""
    forwarding_grpc: GatewayProcess
    """Default threshold; gRPC to the backend."""
    parsing: GatewayProcess
    """Every message parsed whole."""
    forwarded: Recorder
    """What ``forwarding`` sent the backend's REST port."""
    parsed: Recorder
    """What ``parsing`` sent it."""


@contextlib.contextmanager
def forwarding_gateways(folder: Path) -> Iterator[Gateways]:
    """The model server and the three gateways, until the block ends."""
    registry = folder / "models"
    publish_wide_model(registry, "wide")
    publish_linear_pipeline(registry, "linear", offset=1.0)
    publish_classifier(registry, "classifier")
    publish_classifier(registry, "classifier")
    # Two equal versions behind labels, the canary shadowing the stable one.
    publish_wide_model(registry, "mirrored")
    publish_wide_model(registry, "mirrored")
    labels = Registry(registry)
    labels.set_label("mirrored", "stable", 1)
    labels.set_label("mirrored", "canary", 2)
    labels.set_label("classifier", "stable", 1)
    labels.set_label("linear", "stable", 1)
    (registry / "routes.yaml").write_text(json.dumps(ROUTES))
    config = registry / SERVEKIT_CONFIG_FILE
    with model_server(
        (f"--model_config_file={config}", f"--grpc_max_message_bytes={2 * BODY_LIMIT}"),
        log_path=folder / "model-server.log",
    ) as server:
        env = {"GATEWAY_REGISTRY": str(registry)}

        def flags(rest_port: int, *more: str) -> list[str]:
            rest = f'{{"{server.grpc_target}": "127.0.0.1:{rest_port}"}}'
            return [
                f"--default-backend={server.grpc_target}",
                f"--rest-backends={rest}",
                f"--max-body-bytes={BODY_LIMIT}",
                f"--max-request-tensor-elements={TENSOR_ELEMENTS_LIMIT}",
                *more,
            ]

        with (
            recording_relay(server.rest_port) as (forwarded_port, forwarded),
            recording_relay(server.rest_port) as (parsed_port, parsed),
            running_gateway(
                folder / "forwarding", env=env, flags=flags(forwarded_port)
            ) as forwarding,
            running_gateway(
                folder / "forwarding-grpc",
                env=env,
                flags=flags(server.rest_port, "--backend-grpc-web=false"),
            ) as forwarding_grpc,
            running_gateway(
                folder / "parsing",
                env=env,
                flags=flags(parsed_port, "--grpc-parse-offload-bytes=0"),
            ) as parsing,
        ):
            yield Gateways(forwarding, forwarding_grpc, parsing, forwarded, parsed)
            for gateway in (forwarding, forwarding_grpc, parsing):
                assert_no_traceback(gateway.process)


Outcome = tuple[str, str, bytes]
"""A call's status (a gRPC code's name), its message and its answer's bytes."""


def grpc_call(
    target: GatewayProcess | str,
    data: bytes,
    method: str = PREDICT,
    timeout: float = 60.0,
) -> Outcome:
    """One call of ``method`` with ``data`` as its message, on the gateway's
    gRPC port (or at another gRPC address, e.g. the backend's), given
    ``timeout`` seconds."""
    address = target if isinstance(target, str) else target.grpc_target
    options = [
        ("grpc.max_send_message_length", 2 * BODY_LIMIT),
        ("grpc.max_receive_message_length", 4 * BODY_LIMIT),
    ]
    with grpc.insecure_channel(address, options=options) as channel:
        try:
            answer = channel.unary_unary(method)(
                data, timeout=timeout, metadata=(("x-request-id", "large-grpc"),)
            )
        except grpc.RpcError as exc:
            return exc.code().name, exc.details() or "", b""
    return "OK", "", answer


def web_call(gateway: GatewayProcess, data: bytes, method: str = PREDICT) -> Outcome:
    """The same as a gRPC-Web call on the HTTP port: its status named and its
    message decoded as a gRPC client would, so outcomes compare across the
    two transports."""
    answer = httpx.post(
        gateway.url + method,
        content=grpcweb.frame(data),
        headers={
            "content-type": grpcweb.CONTENT_TYPE.decode(),
            "x-request-id": "large-grpc-web",
        },
        timeout=60,
    )
    assert answer.status_code == 200, answer.text[:200]
    status = answer.headers.get("grpc-status")
    if status is not None:
        return _code_name(status), answer.headers.get("grpc-message", ""), b""
    message, trailers = grpcweb.response_parts(answer.content)
    return (
        _code_name(trailers.get("grpc-status", "")),
        grpcweb.decode_status_message(trailers.get("grpc-message", "")),
        (message or b""),
    )


def _code_name(status: str) -> str:
    return next(
        (code.name for code in grpc.StatusCode if str(code.value[0]) == status),
        status,
    )
