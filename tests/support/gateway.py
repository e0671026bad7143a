"""Run ``servekit-gateway`` as a subprocess for a test.

:func:`running_gateway` starts it on 127.0.0.1 with ports it binds itself (port 0,
read back from its ``--ready-file``), waits until it listens, yields a
:class:`GatewayProcess`, and always stops it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.metrics import sample_sum
from tests.support.modelserver import model_server
from tests.support.processes import (
    VENV_BIN,
    ServerProcess,
    file_size_limited,
    running_process,
)


@dataclass
class GatewayProcess:
    """A running gateway."""

    process: ServerProcess
    http_port: int
    grpc_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def client(self, key: str | None = None) -> httpx.Client:
        """An HTTP client, sending ``key`` as ``x-api-key`` when given."""
        headers = {"x-api-key": key} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return sample_sum(text, name, **labels)


@dataclass(frozen=True)
class ApiKeys:
    """Keys for tests: an admin (every model), one scoped to `linear`, two
    rate-limited ones (one per test that spends a bucket, so no test depends on
    how long ago another emptied it)."""

    admin: str = "sk_test_admin"
    linear_only: str = "sk_test_linear_only"
    limited: str = "sk_test_limited"
    limited_grpc: str = "sk_test_limited_grpc"

    def write(self, path: Path, limited_rate: float, limited_burst: float) -> Path:
        """Write a keys file holding only their sha256 digests."""

        def hashed(key: str) -> str:
            return hashlib.sha256(key.encode()).hexdigest()

        path.write_text(
            json.dumps(
                {
                    "keys": [
                        {
                            "name": "admin",
                            "sha256": hashed(self.admin),
                            "scopes": ["*"],
                        },
                        {
                            "name": "linear-only",
                            "sha256": hashed(self.linear_only),
                            "scopes": ["linear"],
                        },
                        *(
                            {
                                "name": name,
                                "sha256": hashed(key),
                                "scopes": ["*"],
                                "rate": {
                                    "per_second": limited_rate,
                                    "burst": limited_burst,
                                },
                            }
                            for name, key in (
                                ("limited", self.limited),
                                ("limited-grpc", self.limited_grpc),
                            )
                        ),
                    ]
                }
            )
        )
        return path


@contextlib.contextmanager
def running_gateway(
    log_dir: Path,
    *,
    env: Mapping[str, str],
    flags: Sequence[str] = (),
    python_options: Sequence[str] = (),
    ready_timeout: float = 60.0,
    file_size_limit: int | None = None,
) -> Iterator[GatewayProcess]:
    """Start the gateway (``python [python_options] -m gateway``) until the block ends.

    Args:
        env: ``GATEWAY_*`` settings (added to the current environment).
        flags: extra command-line flags.
        python_options: interpreter options, e.g. ``("-X", "importtime")``.
        file_size_limit: run it under
            :func:`~tests.support.processes.file_size_limited`.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    ready_file = log_dir / "gateway-ready.json"
    ready_file.unlink(missing_ok=True)
    argv = [
        str(VENV_BIN / "python"),
        *python_options,
        "-m",
        "gateway",
        "--host=127.0.0.1",
        "--port=0",
        "--grpc-port=0",
        f"--ready-file={ready_file}",
        *flags,
    ]
    if file_size_limit is not None:
        argv = file_size_limited(argv, file_size_limit)
    with running_process(
        argv,
        log_path=log_dir / "gateway.log",
        env={**os.environ, **env},
        ready=ready_file.exists,
        ready_timeout=ready_timeout,
    ) as process:
        ports = json.loads(ready_file.read_text())
        yield GatewayProcess(process, ports["http_port"], ports["grpc_port"])


@contextlib.contextmanager
def gateway_over_registry(registry: Path, folder: Path) -> Iterator[GatewayProcess]:
    """A model server for every model of ``registry`` and, in front of it, the
    gateway over the same registry; logs go to ``folder``."""
    with (
        model_server(
            [f"--model_config_file={registry / 'servekit.config'}"],
            log_path=folder / "model-server.log",
            ready_timeout=180,
        ) as backend,
        running_gateway(
            folder / "gateway",
            env={
                "GATEWAY_REGISTRY": str(registry),
                "GATEWAY_DEFAULT_BACKEND": backend.grpc_target,
            },
        ) as gateway,
    ):
        yield gateway
