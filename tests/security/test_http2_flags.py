"""HTTP/2 limits set from the command line change what the gRPC port advertises
and enforces, over the wire: the model server's ``--http2_<field>`` flags and the
gateway's ``--http2-<field>`` flags."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hyperframe.frame import RstStreamFrame, SettingsFrame

from tests.security.http2 import REFUSED_STREAM, RawClient
from tests.support.gateway import running_gateway
from tests.support.models import publish_linear_pipeline
from tests.support.modelserver import model_server

pytestmark = pytest.mark.integration

STREAMS = 7
HEADER_LIST_BYTES = 8 * 1024
STREAM_WINDOW_BYTES = 256 * 1024


@pytest.fixture(scope="module")
def model_server_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    directory: Path = tmp_path_factory.mktemp("http2-flags")
    publish_linear_pipeline(directory / "models", "linear", offset=1.0)
    with model_server(
        [
            "--model_name=linear",
            f"--model_base_path={directory / 'models' / 'linear'}",
            f"--http2_max_concurrent_streams={STREAMS}",
            f"--http2_max_header_list_size={HEADER_LIST_BYTES}",
            f"--http2_stream_window_bytes={STREAM_WINDOW_BYTES}",
        ],
        log_path=directory / "model-server.log",
    ) as server:
        yield server.grpc_port


@pytest.fixture(scope="module")
def gateway_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    directory: Path = tmp_path_factory.mktemp("http2-flags-gateway")
    # No backend is needed to open a connection: nothing listens on port 9.
    with running_gateway(
        directory,
        env={"GATEWAY_REGISTRY": str(directory / "models")},
        flags=[
            "--default-backend=127.0.0.1:9",
            f"--http2-max-concurrent-streams={STREAMS}",
            f"--http2-max-header-list-size={HEADER_LIST_BYTES}",
            f"--http2-stream-window-bytes={STREAM_WINDOW_BYTES}",
        ],
    ) as gateway:
        yield gateway.grpc_port


@pytest.fixture(params=["model server", "gateway"])
def flagged_port(request: pytest.FixtureRequest) -> int:
    fixture = "model_server_port" if request.param == "model server" else "gateway_port"
    port: int = request.getfixturevalue(fixture)
    return port


def test_flags_change_the_advertised_settings(flagged_port: int) -> None:
    client = RawClient(flagged_port)
    frames = client.frames(1.0)
    advertised = {
        key: value
        for frame in frames
        if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags
        for key, value in frame.settings.items()
    }
    assert advertised[SettingsFrame.MAX_CONCURRENT_STREAMS] == STREAMS
    assert advertised[SettingsFrame.MAX_HEADER_LIST_SIZE] == HEADER_LIST_BYTES
    assert advertised[SettingsFrame.INITIAL_WINDOW_SIZE] == STREAM_WINDOW_BYTES
    # And enforced: the 8th open stream is refused.
    client.send(b"".join(client.headers(s) for s in range(1, 2 * STREAMS + 3, 2)))
    refused = {
        f.stream_id
        for f in client.frames(1.5)
        if isinstance(f, RstStreamFrame) and f.error_code == REFUSED_STREAM
    }
    assert refused == {2 * STREAMS + 1}
    client.close()
