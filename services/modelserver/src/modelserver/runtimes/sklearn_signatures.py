"""The signatures a scikit-learn version offers, read from its manifest."""

from __future__ import annotations

from collections.abc import Mapping

from modelregistry import Manifest
from servekit_protocol.serving import DEFAULT_SIGNATURE
from servekit_protocol.tensors import data_type_name

from modelserver.errors import LoadError
from modelserver.runtimes.base import CLASSIFY_CLASSES, CLASSIFY_SCORES
from modelserver.types import (
    CLASSIFY_METHOD,
    PREDICT_METHOD,
    REGRESS_METHOD,
    SignatureInfo,
    TensorInfo,
)

PREDICTIONS = "predictions"
PROBABILITIES = "probabilities"
SUPPORTED_OUTPUTS = (PREDICTIONS, PROBABILITIES, CLASSIFY_SCORES, CLASSIFY_CLASSES)
METHOD_NAMES = {
    "predict": PREDICT_METHOD,
    "classify": CLASSIFY_METHOD,
    "regress": REGRESS_METHOD,
}


def signatures_from_manifest(manifest: Manifest) -> dict[str, SignatureInfo]:
    """The manifest's signatures as metadata (a default one if it lists none).

    Raises:
        LoadError: A dtype the manifest uses has no TensorFlow name.
    """
    if not manifest.signatures:
        if not manifest.features:
            raise LoadError("The manifest lists neither signatures nor features")
        inputs = {
            feature.name: TensorInfo(feature.name, data_type_name(feature.dtype), (-1,))
            for feature in manifest.features
        }
        return {
            DEFAULT_SIGNATURE: SignatureInfo(
                method_name=PREDICT_METHOD,
                inputs=inputs,
                outputs={PREDICTIONS: TensorInfo(PREDICTIONS, "DT_DOUBLE", (-1,))},
            )
        }
    result: dict[str, SignatureInfo] = {}
    for key, signature in manifest.signatures.items():
        result[key] = SignatureInfo(
            method_name=METHOD_NAMES[signature.method],
            inputs={
                alias: TensorInfo(alias, data_type_name(spec.dtype), tuple(spec.shape))
                for alias, spec in signature.inputs.items()
            },
            outputs={
                alias: TensorInfo(alias, data_type_name(spec.dtype), tuple(spec.shape))
                for alias, spec in signature.outputs.items()
            },
        )
    return result


def matrix_input(info: SignatureInfo, features: Mapping[str, str]) -> str | None:
    if len(info.inputs) != 1:
        return None
    ((alias, tensor),) = info.inputs.items()
    if alias in features or tensor.shape is None or len(tensor.shape) != 2:
        return None
    return alias
