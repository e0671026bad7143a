"""The servekit model servers under test, one process per model.

Besides today's server (batching off and on), two reference rows run the same
model server with another gRPC server in place (``benchmarks.grpcvariants``):
the hand-written HTTP/2 server it had before (``servekit-grpc-before``) and
grpcio's C core (``servekit-grpc-aio``); they are loaded over gRPC only.
``servekit train`` compiles scikit-learn versions, so ``servekit`` rows serve the
compiled model; the ``servekit-pickle`` rows serve the same version from its
pickle, from a copy of it without ``compiled/`` (:func:`pickle_registry`), and the
``servekit-approximate`` rows from a copy compiled in approximate mode (float32
trees, :func:`approximate_registry`).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from benchmarks.deployment import Pending, scenarios
from benchmarks.fronts import FRONT_SYSTEMS
from benchmarks.grpcload import PREDICT_METHOD
from benchmarks.grpcvariants import write_before_module
from benchmarks.payloads import ModelPayloads
from benchmarks.servers import ProcessSet, ServerProcess, free_port, http_post_succeeds
from benchmarks.settings import REPO_ROOT, VENV_BIN, BenchOptions
from benchmarks.targets import GrpcTarget, HttpTarget


def write_model_config(
    options: BenchOptions, name: str, registry_root: Path | None = None
) -> Path:
    """A model config file naming one model (absolute base path).

    One model per server process, as deployed (scikit-learn models on the model
    server, SavedModels on TF Serving): a process that also hosts TensorFlow runs
    a scikit-learn pipeline measurably slower, and the models' pollers stay out
    of each other's way. The model serves the one version the request payloads
    were built from.
    """
    from modelregistry import ModelEntry, Registry, config_text

    root = registry_root or options.registry
    registry = Registry(root)
    version = registry.resolve(name)
    entry = ModelEntry(
        name=name,
        base_path=str(root / name),
        platform=registry.framework(name, version),
        policy={"specific": {"versions": [version]}},
    )
    path = options.work_dir / f"servekit-{name}-{root.name}.config"
    path.write_text(config_text([entry]), encoding="utf-8")
    return path


def model_server(
    options: BenchOptions,
    processes: ProcessSet,
    system: str,
    batching: bool,
    model: str,
    variant: str = "",
    registry_root: Path | None = None,
) -> tuple[ServerProcess, str, str]:
    grpc_port, rest_port = free_port(), free_port()
    program = [str(VENV_BIN / "servekit-model-server")]
    if variant:
        program = [sys.executable, "-m", "benchmarks.grpcvariants"]
        program += ["--module-dir", str(_variants_dir(options)), variant]
    argv: list[str] = [
        *program,
        f"--port={grpc_port}",
        f"--rest_api_port={rest_port}",
        f"--model_config_file={write_model_config(options, model, registry_root)}",
        "--host=127.0.0.1",
    ]
    if batching:
        parameters = options.work_dir / "batching_parameters.txt"
        parameters.write_text(options.batching.parameters_text(), encoding="utf-8")
        argv += ["--enable_batching=true", f"--batching_parameters_file={parameters}"]
    process = processes.start(
        f"{system}-{model}", argv, cpu=options.server_cpu, cwd=REPO_ROOT
    )
    return process, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{rest_port}"


VARIANT_SYSTEMS = {"servekit-grpc-before": "before", "servekit-grpc-aio": "aio"}
"""Reference rows: the model server on another gRPC server (batching off)."""
PICKLE_SYSTEMS = {"servekit-pickle": False, "servekit-pickle-batching": True}
"""Reference rows: the scikit-learn model served from its pickle."""


def pickle_registry(options: BenchOptions, model: str) -> Path:
    """A registry holding ``model``'s served version without its compiled model.

    The version is copied and amended as ``servekit models compile`` would record a
    refusal, so its manifest lists and digests what is left and the pickle serves.
    """
    from modelregistry import Registry

    version = Registry(options.registry).resolve(model)
    root = options.work_dir / "registry-pickle"
    shutil.rmtree(root / model, ignore_errors=True)
    shutil.copytree(
        options.registry / model / str(version),
        root / model / str(version),
        ignore=shutil.ignore_patterns(".*"),
    )
    Registry(root).amend(model, version, "compiled", {}, {"compiled": None})
    return root


APPROXIMATE_SYSTEMS = {
    "servekit-approximate": False,
    "servekit-approximate-batching": True,
}
"""Reference rows: the scikit-learn model compiled in approximate mode."""


def approximate_registry(options: BenchOptions, model: str) -> Path:
    """A registry holding ``model``'s served version compiled in approximate mode.

    The version is copied and compiled again as ``servekit models compile --mode
    approximate`` does, parity gate included (its stages are printed); a copy
    already compiled so from the same pickle is kept.
    """
    from modelregistry import Registry
    from rich.console import Console
    from servekit.compiling import compile_published

    source = Registry(options.registry)
    version = source.resolve(model)
    artifact = source.manifest(model, version)
    root = options.work_dir / "registry-approximate"
    if (root / model / str(version) / "servekit.json").is_file():
        kept = Registry(root).manifest(model, version)
        if (
            kept.compiled is not None
            and kept.compiled.mode == "approximate"
            and kept.compiled.status == "passed"
            and kept.files.get(kept.artifact) == artifact.files.get(artifact.artifact)
        ):
            return root
    shutil.rmtree(root / model, ignore_errors=True)
    shutil.copytree(
        options.registry / model / str(version),
        root / model / str(version),
        ignore=shutil.ignore_patterns(".*"),
    )
    verdict = compile_published(
        Registry(root), model, version, "approximate", Console(stderr=True)
    )
    if verdict["status"] != "passed":
        raise RuntimeError(f"{model}: the approximate compile was refused: {verdict}")
    return root


def _variants_dir(options: BenchOptions) -> Path:
    return options.work_dir / "grpc-before"


def start_model_servers(
    options: BenchOptions,
    models: list[ModelPayloads],
    processes: ProcessSet,
) -> dict[str, dict[str, Pending]]:
    """System -> model -> the started process serving it."""
    started: dict[str, dict[str, Pending]] = {}
    if options.wants("servekit-grpc-before"):
        write_before_module(_variants_dir(options))
    systems = [("servekit", False), ("servekit-batching", True)]
    systems += [(name, False) for name in VARIANT_SYSTEMS]
    systems += [*PICKLE_SYSTEMS.items(), *APPROXIMATE_SYSTEMS.items()]
    for system, batching in systems:
        behind_gateway = system == options.gateway_backend and any(
            options.wants(name) for name in FRONT_SYSTEMS
        )
        if not (options.wants(system) or behind_gateway):
            continue
        for model in models:
            variant = VARIANT_SYSTEMS.get(system, "")
            root = None
            if system in PICKLE_SYSTEMS or system in APPROXIMATE_SYSTEMS:
                if model.framework != "sklearn":
                    continue
                root = (
                    pickle_registry(options, model.name)
                    if system in PICKLE_SYSTEMS
                    else approximate_registry(options, model.name)
                )
            process, grpc_address, rest_base = model_server(
                options, processes, system, batching, model.name, variant, root
            )
            url = f"{rest_base}/v1/models/{model.name}:predict"
            item = Pending(
                process,
                {model.name: http_post_succeeds(url, model.tfs_rest.read_bytes())},
            )
            item.address = grpc_address
            item.rest_address = rest_base.removeprefix("http://")
            if options.wants(system):
                item.scenarios += scenarios(
                    model.name,
                    system,
                    ("grpc",) if variant else options.protocols,
                    HttpTarget(url, model.tfs_rest),
                    GrpcTarget(grpc_address, PREDICT_METHOD, model.tfs_grpc),
                )
            started.setdefault(system, {})[model.name] = item
    return started
