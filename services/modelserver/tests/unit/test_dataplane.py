"""The DataPlane end to end on real scikit-learn pipelines (no transports):
resolution, the four APIs, metadata, errors and metrics."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from modelserver.dataplane import DataPlane, _post_processed
from modelserver.errors import (
    DeadlineExceeded,
    InvalidInput,
    LabelNotFound,
    ModelNotFound,
    PredictSignatureNotFound,
    SignatureNotFound,
    Unimplemented,
    VersionNotFound,
)
from modelserver.observability.metrics import Metrics
from modelserver.types import (
    CLASSIFY_METHOD,
    REGRESS_METHOD,
    ClassifyRequest,
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

from tests.support.models import linear_inputs, publish_linear_pipeline

StartDataPlane = Callable[..., Awaitable[DataPlane]]


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
    pairs = classified.results.pairs()
    assert [row[0][0] for row in pairs] == ["large", "large"]
    assert pairs[0][0][1] > 0.5 > pairs[1][0][1]
    regressed = await dataplane.regress(
        RegressRequest(ModelSpec("linear"), [{"a": [1.0]}], context={"b": [1.0]})
    )
    assert regressed.results.dtype == np.float32
    assert regressed.results.tolist() == pytest.approx([6.0])
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


async def test_large_outputs_are_post_processed_in_a_thread() -> None:
    def thread_name() -> str:
        return threading.current_thread().name

    outputs = [np.zeros((4, 2)), np.zeros(2)]
    # Ten elements: on the loop's thread under the threshold, not from it.
    assert await _post_processed(thread_name, outputs, 11) == (
        threading.current_thread().name
    )
    assert await _post_processed(thread_name, outputs, 10) != (
        threading.current_thread().name
    )
