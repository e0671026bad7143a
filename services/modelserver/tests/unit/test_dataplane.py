"""The DataPlane end to end on real scikit-learn pipelines (no transports)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format
from modelserver.dataplane import DataPlane
from modelserver.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidConfig,
    InvalidInput,
    LabelNotFound,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    PredictSignatureNotFound,
    SignatureNotFound,
    Unimplemented,
    VersionNotFound,
)
from modelserver.observability.metrics import Metrics
from modelserver.settings import Settings
from modelserver.types import (
    CLASSIFY_METHOD,
    REGRESS_METHOD,
    ClassifyRequest,
    ClassifyResponse,
    Example,
    InferenceTask,
    ModelSpec,
    MultiInferenceRequest,
    PredictRequest,
    RegressRequest,
    RegressResponse,
    ResolvedSpec,
    VersionState,
    VersionStatus,
)
from servekit_protocol import messages

from tests.support.models import publish_linear_pipeline

StartDataPlane = Callable[..., Awaitable[DataPlane]]


@pytest.fixture
async def start_dataplane(
    metrics: Metrics, settings_for: Any
) -> AsyncIterator[StartDataPlane]:
    started: list[DataPlane] = []

    async def start(config_file: Path, **overrides: Any) -> DataPlane:
        settings: Settings = settings_for(config_file, **overrides)
        dataplane = DataPlane.from_settings(settings, metrics)
        await dataplane.start()
        started.append(dataplane)
        return dataplane

    yield start
    for dataplane in started:
        if dataplane.live():
            await dataplane.stop()


@pytest.fixture
def two_models(
    tmp_path: Path,
    sklearn_linear_version: Path,
    sklearn_classifier_version: Path,
    install_version: Any,
    write_config: Any,
) -> Path:
    install_version(sklearn_linear_version, tmp_path / "linear", 1)
    install_version(sklearn_linear_version, tmp_path / "linear", 2)
    install_version(sklearn_classifier_version, tmp_path / "classifier", 3)
    return write_config(  # type: ignore[no-any-return]
        tmp_path / "servekit.config",
        'name: "linear" base_path: "linear" model_platform: "sklearn" '
        "model_version_policy { all {} } "
        'version_labels { key: "stable" value: 1 }',
        'name: "classifier" base_path: "classifier" model_platform: "sklearn"',
    )


def linear_inputs(*rows: tuple[float, float]) -> dict[str, np.ndarray]:
    return {
        "a": np.array([row[0] for row in rows]),
        "b": np.array([row[1] for row in rows]),
    }


async def test_predict_resolves_latest_version_and_label(
    start_dataplane: StartDataPlane, two_models: Path
) -> None:
    dataplane = await start_dataplane(two_models)
    assert dataplane.ready()
    response = await dataplane.predict(
        PredictRequest(ModelSpec("linear"), linear_inputs((1.0, 1.0), (0.0, 2.0)))
    )
    assert response.spec == ResolvedSpec("linear", 2, "serving_default")
    assert response.outputs["predictions"].tolist() == pytest.approx([6.0, 7.0])
    labelled = await dataplane.predict(
        PredictRequest(ModelSpec("linear", label="stable"), linear_inputs((1.0, 1.0)))
    )
    assert labelled.spec.version == 1
    pinned = await dataplane.predict(
        PredictRequest(ModelSpec("linear", version=1), linear_inputs((1.0, 1.0)))
    )
    assert pinned.spec.version == 1


async def test_classify_regress_and_multi_inference(
    start_dataplane: StartDataPlane, two_models: Path
) -> None:
    dataplane = await start_dataplane(two_models)
    classified = await dataplane.classify(
        ClassifyRequest(
            ModelSpec("classifier"),
            [{"size": [3.0], "color": [b"red"]}, {"size": [-3.0], "color": [b"blue"]}],
        )
    )
    assert classified.spec == ResolvedSpec("classifier", 3, "serving_default")
    assert [row[0][0] for row in classified.results] == ["large", "large"]
    assert classified.results[0][0][1] > 0.5 > classified.results[1][0][1]
    regressed = await dataplane.regress(
        RegressRequest(ModelSpec("linear"), [{"a": [1.0]}], context={"b": [1.0]})
    )
    assert regressed.results == pytest.approx([6.0])
    multi = await dataplane.multi_inference(
        MultiInferenceRequest(
            (
                InferenceTask(ModelSpec("linear"), REGRESS_METHOD),
                InferenceTask(
                    ModelSpec("linear", signature_name="serving_default"),
                    REGRESS_METHOD,
                ),
            ),
            [{"a": [1.0], "b": [1.0]}],
        )
    )
    first = multi.results[0]
    assert isinstance(first, RegressResponse)
    assert first.spec == ResolvedSpec("linear", 2, "serving_default")
    assert first.results == pytest.approx([6.0])


async def test_multi_inference_follows_tf_serving_rules(
    start_dataplane: StartDataPlane, two_models: Path
) -> None:
    dataplane = await start_dataplane(two_models)
    examples: list[Example] = [{"a": [1.0], "b": [1.0]}]
    with pytest.raises(InvalidInput, match="same model name"):
        await dataplane.multi_inference(
            MultiInferenceRequest(
                (
                    InferenceTask(ModelSpec("linear"), REGRESS_METHOD),
                    InferenceTask(ModelSpec("classifier"), CLASSIFY_METHOD),
                ),
                examples,
            )
        )
    with pytest.raises(InvalidInput, match="Duplicate evaluation of signature"):
        await dataplane.multi_inference(
            MultiInferenceRequest(
                (
                    InferenceTask(ModelSpec("linear"), REGRESS_METHOD),
                    InferenceTask(ModelSpec("linear"), REGRESS_METHOD),
                ),
                examples,
            )
        )
    with pytest.raises(Unimplemented, match="Unsupported signature method_name"):
        await dataplane.multi_inference(
            MultiInferenceRequest(
                (InferenceTask(ModelSpec("linear"), "tensorflow/serving/predict"),),
                examples,
            )
        )


async def test_metadata_signature_and_status(
    start_dataplane: StartDataPlane, two_models: Path
) -> None:
    dataplane = await start_dataplane(two_models)
    metadata = await dataplane.metadata(ModelSpec("classifier"))
    assert metadata.spec == ResolvedSpec("classifier", 3, "")
    assert set(metadata.signatures) == {"serving_default", "predict_proba"}
    spec, signature = await dataplane.signature(
        ModelSpec("classifier", signature_name="predict_proba")
    )
    assert spec == ResolvedSpec("classifier", 3, "predict_proba")
    assert list(signature.outputs) == ["probabilities"]
    assert await dataplane.status(ModelSpec("linear")) == [
        VersionStatus(2, VersionState.AVAILABLE),
        VersionStatus(1, VersionState.AVAILABLE),
    ]
    assert await dataplane.status(ModelSpec("linear", version=1)) == [
        VersionStatus(1, VersionState.AVAILABLE)
    ]


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        (
            ModelSpec("nope"),
            ModelNotFound,
            r"Servable not found for request: Latest\(nope\)",
        ),
        (ModelSpec("linear", version=9), VersionNotFound, r"Specific\(linear, 9\)"),
        (ModelSpec("linear", label="gold"), LabelNotFound, "Unrecognized servable"),
        (
            ModelSpec("linear", signature_name="nope"),
            PredictSignatureNotFound,
            'Serving signature key "nope" not found.',
        ),
    ],
)
async def test_predict_errors(
    start_dataplane: StartDataPlane,
    two_models: Path,
    metrics: Metrics,
    spec: ModelSpec,
    error: type[Exception],
    message: str,
) -> None:
    dataplane = await start_dataplane(two_models)
    with pytest.raises(error, match=message):
        await dataplane.predict(PredictRequest(spec, linear_inputs((1.0, 1.0))))
    code = error.grpc_code.name  # type: ignore[attr-defined]
    counted = sum(
        sample.value
        for family in metrics.registry.collect()
        if family.name == "modelserver_request_count"
        for sample in family.samples
        if sample.name.endswith("_total")
        and sample.labels["status"] == code
        and sample.labels["model"] == spec.name
    )
    assert counted == 1


async def test_signature_errors_for_rest(
    start_dataplane: StartDataPlane, two_models: Path
) -> None:
    dataplane = await start_dataplane(two_models)
    with pytest.raises(SignatureNotFound, match="not found in signature def"):
        await dataplane.signature(ModelSpec("linear", signature_name="nope"))
    with pytest.raises(ModelNotFound, match="Could not find any versions of model x"):
        await dataplane.status(ModelSpec("x"))


async def test_request_metrics_have_model_version_api_protocol_status(
    start_dataplane: StartDataPlane, two_models: Path, metrics: Metrics
) -> None:
    dataplane = await start_dataplane(two_models)
    await dataplane.predict(
        PredictRequest(ModelSpec("linear"), linear_inputs((1.0, 1.0))),
        protocol="rest",
    )
    labels = {
        "model": "linear",
        "version": "2",
        "api": "predict",
        "protocol": "rest",
        "status": "OK",
    }
    registry = metrics.registry
    assert registry.get_sample_value("modelserver_request_count_total", labels) == 1
    assert (
        registry.get_sample_value("modelserver_request_latency_seconds_count", labels)
        == 1
    )


async def test_deadline_exceeded(
    start_dataplane: StartDataPlane, tmp_path: Path, write_config: Any
) -> None:
    publish_linear_pipeline(tmp_path, "slow", sleep_seconds=0.5)
    config = write_config(
        tmp_path / "slow.config",
        'name: "slow" base_path: "slow" model_platform: "sklearn"',
    )
    dataplane = await start_dataplane(config, enable_model_warmup=False)
    with pytest.raises(DeadlineExceeded):
        await dataplane.predict(
            PredictRequest(ModelSpec("slow"), linear_inputs((1.0, 1.0))),
            timeout=0.05,
        )


async def test_batching_merges_concurrent_requests(
    start_dataplane: StartDataPlane,
    two_models: Path,
    tmp_path: Path,
    metrics: Metrics,
) -> None:
    batching = tmp_path / "batching.txt"
    batching.write_text(
        "max_batch_size { value: 16 }\nbatch_timeout_micros { value: 50000 }\n"
        "num_batch_threads { value: 1 }\n"
    )
    dataplane = await start_dataplane(
        two_models, enable_batching=True, batching_parameters_file=str(batching)
    )
    rows = [(float(index), 1.0) for index in range(12)]
    responses = await asyncio.gather(
        *(
            dataplane.predict(PredictRequest(ModelSpec("linear"), linear_inputs(row)))
            for row in rows
        )
    )
    for (a, b), response in zip(rows, responses, strict=True):
        assert response.outputs["predictions"].tolist() == pytest.approx(
            [2 * a + 3 * b + 1]
        )
    labels = {"model": "linear", "version": "2", "signature": "serving_default"}
    batches = metrics.registry.get_sample_value("modelserver_batch_size_count", labels)
    merged_rows = metrics.registry.get_sample_value(
        "modelserver_batch_size_sum", labels
    )
    assert merged_rows == 12
    assert batches is not None
    assert batches < 12
    assert (
        metrics.registry.get_sample_value("modelserver_batch_queue_depth", labels) == 0
    )
    classified = await asyncio.gather(
        *(
            dataplane.classify(
                ClassifyRequest(
                    ModelSpec("classifier"), [{"size": [s], "color": [b"red"]}]
                )
            )
            for s in (3.0, -3.0)
        )
    )
    assert all(isinstance(answer, ClassifyResponse) for answer in classified)
    assert classified[0].results[0][0][1] > classified[1].results[0][0][1]


async def test_a_lone_request_does_not_wait_for_the_batch_timeout(
    start_dataplane: StartDataPlane, two_models: Path, tmp_path: Path
) -> None:
    batching = tmp_path / "batching.txt"
    batching.write_text(
        "max_batch_size { value: 16 }\nbatch_timeout_micros { value: 5000000 }\n"
    )
    dataplane = await start_dataplane(
        two_models, enable_batching=True, batching_parameters_file=str(batching)
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(3):
        await dataplane.predict(
            PredictRequest(ModelSpec("linear"), linear_inputs((1.0, 1.0)))
        )
    assert loop.time() - started < 4.0


async def test_full_batch_queue_answers_overloaded_at_once(
    start_dataplane: StartDataPlane, tmp_path: Path, write_config: Any
) -> None:
    publish_linear_pipeline(tmp_path, "slow", sleep_seconds=0.3)
    config = write_config(
        tmp_path / "slow.config",
        'name: "slow" base_path: "slow" model_platform: "sklearn"',
    )
    batching = tmp_path / "batching.txt"
    batching.write_text(
        "max_batch_size { value: 2 }\nmax_enqueued_batches { value: 1 }\n"
        "num_batch_threads { value: 1 }\n"
    )
    dataplane = await start_dataplane(
        config,
        enable_model_warmup=False,
        enable_batching=True,
        batching_parameters_file=str(batching),
    )

    async def one() -> str:
        try:
            await dataplane.predict(
                PredictRequest(ModelSpec("slow"), linear_inputs((1.0, 1.0)))
            )
        except Overloaded:
            return "overloaded"
        return "ok"

    outcomes = await asyncio.gather(*(one() for _ in range(8)))
    assert outcomes.count("ok") >= 2
    assert outcomes.count("overloaded") >= 1
    with pytest.raises(InvalidInput, match="larger than maximum input batch size 2"):
        await dataplane.predict(
            PredictRequest(
                ModelSpec("slow"), linear_inputs((1.0, 1.0), (1.0, 1.0), (1.0, 1.0))
            )
        )


async def test_requests_that_would_miss_their_deadline_are_shed(
    start_dataplane: StartDataPlane, tmp_path: Path, write_config: Any
) -> None:
    publish_linear_pipeline(tmp_path, "slow", sleep_seconds=0.2)
    config = write_config(
        tmp_path / "slow.config",
        'name: "slow" base_path: "slow" model_platform: "sklearn"',
    )
    batching = tmp_path / "batching.txt"
    batching.write_text(
        "max_batch_size { value: 1 }\nmax_enqueued_batches { value: 100 }\n"
        "num_batch_threads { value: 1 }\n"
    )
    dataplane = await start_dataplane(
        config,
        enable_model_warmup=False,
        enable_batching=True,
        batching_parameters_file=str(batching),
    )
    request = PredictRequest(ModelSpec("slow"), linear_inputs((1.0, 1.0)))
    await dataplane.predict(request)  # the queue learns how long a batch takes
    loop = asyncio.get_running_loop()

    async def one() -> tuple[str, float]:
        started = loop.time()
        try:
            await dataplane.predict(request, timeout=0.5)
        except Overloaded as exc:
            assert "deadline" in str(exc)
            return "shed", loop.time() - started
        except DeadlineExceeded:
            return "late", loop.time() - started
        return "ok", loop.time() - started

    outcomes = await asyncio.gather(*(one() for _ in range(8)))
    shed = [elapsed for outcome, elapsed in outcomes if outcome == "shed"]
    assert len(shed) >= 4
    assert max(shed) < 0.15
    assert any(outcome == "ok" for outcome, _ in outcomes)


async def test_reload_config_adds_and_removes_models(
    start_dataplane: StartDataPlane,
    two_models: Path,
    tmp_path: Path,
) -> None:
    dataplane = await start_dataplane(two_models)
    config = messages.ModelServerConfig()
    text_format.Parse(
        'model_config_list { config { name: "renamed" base_path: "'
        + str(tmp_path / "linear")
        + '" model_platform: "sklearn" } }',
        config,
    )
    await dataplane.reload_config(config)
    response = await dataplane.predict(
        PredictRequest(ModelSpec("renamed"), linear_inputs((1.0, 1.0)))
    )
    assert response.spec.version == 2
    with pytest.raises(ModelNotFound):
        await dataplane.predict(
            PredictRequest(ModelSpec("linear"), linear_inputs((1.0, 1.0)))
        )
    # An empty config changes nothing, as in TF Serving.
    await dataplane.reload_config(messages.ModelServerConfig())
    assert (await dataplane.status(ModelSpec("renamed")))[0].state is (
        VersionState.AVAILABLE
    )
    custom = messages.ModelServerConfig()
    custom.custom_model_config.type_url = "x"
    with pytest.raises(InvalidConfig):
        await dataplane.reload_config(custom)
    labelled = messages.ModelServerConfig()
    text_format.Parse(
        'model_config_list { config { name: "renamed" base_path: "'
        + str(tmp_path / "linear")
        + '" model_platform: "sklearn" version_labels { key: "old" value: 1 } } }',
        labelled,
    )
    with pytest.raises(FailedPrecondition):
        await dataplane.reload_config(labelled)


async def test_config_file_and_file_system_are_polled(
    start_dataplane: StartDataPlane,
    tmp_path: Path,
    sklearn_linear_version: Path,
    install_version: Any,
    write_config: Any,
) -> None:
    install_version(sklearn_linear_version, tmp_path / "first", 1)
    config = write_config(
        tmp_path / "servekit.config",
        'name: "first" base_path: "first" model_platform: "sklearn"',
    )
    dataplane = await start_dataplane(
        config,
        file_system_poll_wait_seconds=1,
        model_config_file_poll_wait_seconds=1,
    )
    install_version(sklearn_linear_version, tmp_path / "first", 5)
    install_version(sklearn_linear_version, tmp_path / "second", 1)
    write_config(
        config,
        'name: "first" base_path: "first" model_platform: "sklearn"',
        'name: "second" base_path: "second" model_platform: "sklearn"',
    )

    async def served(spec: ModelSpec) -> int:
        for _ in range(100):
            try:
                response = await dataplane.predict(
                    PredictRequest(spec, linear_inputs((1.0, 1.0)))
                )
            except ModelNotFound:
                await asyncio.sleep(0.1)
                continue
            if spec.name == "first" and response.spec.version != 5:
                await asyncio.sleep(0.1)
                continue
            return response.spec.version
        raise AssertionError(f"{spec.name} was not served in time")

    assert await served(ModelSpec("second")) == 1
    assert await served(ModelSpec("first")) == 5


async def test_hot_reload_under_load_drops_no_request(
    start_dataplane: StartDataPlane,
    tmp_path: Path,
    sklearn_linear_version: Path,
    install_version: Any,
    write_config: Any,
) -> None:
    install_version(sklearn_linear_version, tmp_path / "linear", 1)
    config = write_config(
        tmp_path / "servekit.config",
        'name: "linear" base_path: "linear" model_platform: "sklearn"',
    )
    dataplane = await start_dataplane(config)
    versions_seen: list[int] = []
    failures: list[Exception] = []
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            try:
                response = await dataplane.predict(
                    PredictRequest(ModelSpec("linear"), linear_inputs((1.0, 1.0)))
                )
                versions_seen.append(response.spec.version)
            except Exception as exc:
                failures.append(exc)
            await asyncio.sleep(0)

    clients = [asyncio.create_task(client()) for _ in range(4)]
    await asyncio.sleep(0.2)
    install_version(sklearn_linear_version, tmp_path / "linear", 2)
    await dataplane.registry.poll_file_system()
    await dataplane.registry.settle()
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.gather(*clients)
    assert failures == []
    assert versions_seen[0] == 1
    assert versions_seen[-1] == 2
    assert await dataplane.status(ModelSpec("linear")) == [
        VersionStatus(2, VersionState.AVAILABLE),
        VersionStatus(1, VersionState.END),
    ]


async def test_stop_drains_in_flight_requests(
    start_dataplane: StartDataPlane, tmp_path: Path, write_config: Any
) -> None:
    publish_linear_pipeline(tmp_path, "slow", sleep_seconds=0.3)
    config = write_config(
        tmp_path / "slow.config",
        'name: "slow" base_path: "slow" model_platform: "sklearn"',
    )
    dataplane = await start_dataplane(config, enable_model_warmup=False)
    in_flight = asyncio.create_task(
        dataplane.predict(PredictRequest(ModelSpec("slow"), linear_inputs((1.0, 1.0))))
    )
    await asyncio.sleep(0.05)
    await dataplane.stop()
    response = await in_flight
    assert response.outputs["predictions"].tolist() == pytest.approx([6.0])
    assert not dataplane.ready()
    assert not dataplane.live()
    with pytest.raises(ModelNotReady):
        await dataplane.predict(
            PredictRequest(ModelSpec("slow"), linear_inputs((1.0, 1.0)))
        )


async def test_failed_version_reported_while_the_previous_one_serves(
    start_dataplane: StartDataPlane,
    tmp_path: Path,
    sklearn_linear_version: Path,
    install_version: Any,
    write_config: Any,
) -> None:
    install_version(sklearn_linear_version, tmp_path / "linear", 1)
    config = write_config(
        tmp_path / "servekit.config",
        'name: "linear" base_path: "linear" model_platform: "sklearn"',
    )
    dataplane = await start_dataplane(config)
    broken = install_version(sklearn_linear_version, tmp_path / "linear", 2)
    (broken / "model.joblib").write_bytes(b"not a pickle")
    await dataplane.registry.poll_file_system()
    await dataplane.registry.settle()
    failed, serving = await dataplane.status(ModelSpec("linear"))
    assert failed.version == 2
    assert failed.state is VersionState.END
    assert "sha256" in failed.error_message
    assert serving == VersionStatus(1, VersionState.AVAILABLE)
    response = await dataplane.predict(
        PredictRequest(ModelSpec("linear"), linear_inputs((1.0, 1.0)))
    )
    assert response.spec.version == 1
