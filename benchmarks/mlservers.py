"""MLServer (with its scikit-learn runtime) as a system under test."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.deployment import Pending, scenarios
from benchmarks.grpcload import V2_INFER_METHOD
from benchmarks.payloads import ModelPayloads
from benchmarks.servers import ProcessSet, StartError, free_port, http_post_succeeds
from benchmarks.settings import BenchOptions
from benchmarks.targets import GrpcTarget, HttpTarget


def _mlserver_folder(
    options: BenchOptions, payload: ModelPayloads, name: str, batching: bool
) -> tuple[Path, int, int]:
    folder = options.work_dir / "mlserver" / name
    model_folder = folder / payload.name
    model_folder.mkdir(parents=True, exist_ok=True)
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    settings = {
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "parallel_workers": options.mlserver_workers,
        # MLServer's default (debug) logs at DEBUG level; production runs without.
        "debug": False,
    }
    model_settings: dict[str, Any] = {
        "name": payload.name,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {
            "uri": str(payload.version_dir / "model.joblib"),
            "version": str(payload.version),
        },
    }
    if batching:
        model_settings["max_batch_size"] = options.batching.mlserver_max_batch_size
        model_settings["max_batch_time"] = options.batching.mlserver_max_batch_time
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    (model_folder / "model-settings.json").write_text(
        json.dumps(model_settings, indent=2)
    )
    return folder, http_port, grpc_port


@dataclass
class RequestBuild:
    """MLServer's gRPC request being serialized by its own interpreter."""

    popen: subprocess.Popen[bytes]
    out: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()

    def wait(self) -> Path:
        """Wait for the request file.

        Raises:
            StartError: The helper failed.
        """
        try:
            _, stderr = self.popen.communicate(timeout=300)
        except subprocess.TimeoutExpired as exc:
            self.popen.kill()
            raise StartError("building MLServer's gRPC request timed out") from exc
        if self.popen.returncode != 0:
            raise StartError(
                f"cannot build MLServer's gRPC request:\n{stderr.decode()[-1500:]}"
            )
        return self.out


def _mlserver_grpc_request(
    mlserver: Path, payload: ModelPayloads, directory: Path
) -> RequestBuild:
    # Importing MLServer takes a while on a busy core: run it alongside the servers'
    # start-up instead of before it.
    out = directory / f"{payload.name}.v2.bin"
    helper = Path(__file__).with_name("mlserver_requests.py")
    popen = subprocess.Popen(
        [str(mlserver.parent / "python"), str(helper), str(payload.v2_rest)]
        + [payload.name, str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return RequestBuild(popen, out)


def start_mlservers(
    options: BenchOptions,
    models: list[ModelPayloads],
    processes: ProcessSet,
    mlserver: Path,
    builds: list[RequestBuild],
) -> list[Pending]:
    pending: list[Pending] = []
    for system, batching in (("mlserver", False), ("mlserver-batching", True)):
        if not options.wants(system):
            continue
        for model in models:
            if model.framework != "sklearn":
                continue
            folder, http_port, grpc_port = _mlserver_folder(
                options, model, system, batching
            )
            process = processes.start(
                f"{system}-{model.name}",
                [str(mlserver), "start", str(folder)],
                cpu=options.server_cpu,
                # The pickle references the model's own module in its code folder.
                env={"PYTHONPATH": str(model.version_dir / "code")},
                cwd=folder,
            )
            url = f"http://127.0.0.1:{http_port}/v2/models/{model.name}/infer"
            grpc_request = (
                _mlserver_grpc_request(mlserver, model, options.work_dir / "payloads")
                if "grpc" in options.protocols
                else None
            )
            if grpc_request is not None:
                builds.append(grpc_request)
            pending.append(
                Pending(
                    process,
                    {model.name: http_post_succeeds(url, model.v2_rest.read_bytes())},
                    scenarios(
                        model.name,
                        system,
                        options.protocols,
                        HttpTarget(url, model.v2_rest),
                        None
                        if grpc_request is None
                        else GrpcTarget(
                            f"127.0.0.1:{grpc_port}", V2_INFER_METHOD, grpc_request.out
                        ),
                    ),
                )
            )
    return pending
