"""The model server's HTTP/2 limits set from its command line (``--http2_<field>``)
change what its gRPC port advertises and enforces, over the wire."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hyperframe.frame import RstStreamFrame, SettingsFrame

from tests.security.http2 import REFUSED_STREAM, RawClient
from tests.support.models import publish_linear_pipeline
from tests.support.modelserver import ModelServer, model_server

pytestmark = pytest.mark.integration

STREAMS = 7
HEADER_LIST_BYTES = 8 * 1024
STREAM_WINDOW_BYTES = 256 * 1024


@pytest.fixture(scope="module")
def flagged_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
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
        yield server


def test_flags_change_the_advertised_settings(flagged_server: ModelServer) -> None:
    client = RawClient(flagged_server.grpc_port)
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
