"""Transport-neutral request, response and metadata types of the model server.

The REST and gRPC layers decode their wire formats into these types, hand them to
:class:`modelserver.dataplane.DataPlane`, and encode the answers back. Nothing here
knows about JSON, protobuf or HTTP, so the dataplane and the runtimes stay free of
transport concerns.

Conventions (shared by every module of the model server):

- Tensors are ``numpy.ndarray``; string tensors are ``dtype=object`` arrays of
  ``bytes``. The first dimension is the batch dimension.
- Dtypes in metadata are TensorFlow enum names (``"DT_FLOAT"``, ``"DT_STRING"``...),
  exactly as ``tensorflow.DataType`` spells them, so the transports can turn them
  into ``DataType`` values with ``DataType.Value(name)``.
- Shapes in metadata use ``-1`` for an unknown dimension and ``None`` for an
  unknown rank (``tensor_shape { unknown_rank: true }``).
- A tf.Example is a ``dict`` from feature name to a list of floats, ints or bytes
  (``servekit_protocol.examples`` converts between that and the protobuf).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeAlias

import numpy.typing as npt

Tensor: TypeAlias = npt.NDArray[Any]
"""A request or response tensor (``dtype=object`` of ``bytes`` for strings)."""

FeatureValues: TypeAlias = list[float] | list[int] | list[bytes]
Example: TypeAlias = dict[str, FeatureValues]
"""One tf.Example as a mapping of feature name to its value list."""

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"


class VersionState(StrEnum):
    """A model version's life-cycle state, as ``ModelVersionStatus.State`` names it."""

    START = "START"
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"


class Api(StrEnum):
    """The API a request came through; a label on the request metrics."""

    PREDICT = "predict"
    CLASSIFY = "classify"
    REGRESS = "regress"
    MULTI_INFERENCE = "multi_inference"
    METADATA = "metadata"
    STATUS = "status"
    RELOAD_CONFIG = "reload_config"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What a client asks for: a model, optionally a version or a label, a signature.

    ``version`` and ``label`` are mutually exclusive; with neither, the latest
    AVAILABLE version serves (TF Serving's ``Latest(name)``). An empty
    ``signature_name`` means ``serving_default``.
    """

    name: str
    version: int | None = None
    label: str | None = None
    signature_name: str = ""


@dataclass(frozen=True, slots=True)
class ResolvedSpec:
    """The version that actually answered, echoed back as the response ``model_spec``.

    ``signature_name`` is the signature that ran, with an empty request name
    resolved to ``serving_default`` (as TF Serving's ``MakeModelSpec`` does);
    metadata answers leave it empty.
    """

    name: str
    version: int
    signature_name: str = ""


@dataclass(frozen=True, slots=True)
class PredictRequest:
    """A Predict call: named input tensors for one signature.

    ``output_filter`` names the signature outputs to return (all when empty).
    """

    spec: ModelSpec
    inputs: dict[str, Tensor]
    output_filter: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PredictResponse:
    """Named output tensors of one Predict call."""

    spec: ResolvedSpec
    outputs: dict[str, Tensor]


@dataclass(frozen=True, slots=True)
class FeatureColumn:
    """One feature of a batch of tf.Examples, column by column.

    Attributes:
        values: The values of every example that has the feature, one example
            after the other: ``float64`` when they are all floats, ``int64``
            when all ints, else an ``object`` array of the Python values
            (``bytes``, or a mix of kinds).
        lengths: How many values each example holding the feature has (0 for
            a feature with no list set).
        present: The indices of the examples holding the feature, increasing;
            None when every example holds it.
    """

    values: Tensor
    lengths: Tensor
    present: Tensor | None = None


@dataclass(frozen=True, slots=True)
class ExampleColumns:
    """tf.Examples, already merged with their context, as one column a feature
    (:mod:`modelserver.examplecolumns`): what a large gRPC message decoded in
    a worker process hands over, arrays instead of a dict an example.

    Attributes:
        rows: How many examples.
        features: Feature name -> its column.
    """

    rows: int
    features: dict[str, FeatureColumn]


Examples: TypeAlias = "list[Example] | ExampleColumns"
"""A call's tf.Examples: dicts (merged with ``context`` when it runs) or
columns (``context`` already merged in, and then None)."""


@dataclass(frozen=True, slots=True)
class ClassifyRequest:
    """A Classify call: tf.Examples, optionally merged with a shared ``context``."""

    spec: ModelSpec
    examples: Examples
    context: Example | None = None


@dataclass(frozen=True, slots=True)
class RegressRequest:
    """A Regress call: tf.Examples, optionally merged with a shared ``context``."""

    spec: ModelSpec
    examples: Examples
    context: Example | None = None


@dataclass(frozen=True, slots=True)
class Classifications:
    """Every example's classes with their scores, in the signature's class order.

    Kept as the model's arrays until a transport writes them: the list of
    ``(label, score)`` pairs costs far more than the arrays (0.4 s for 100,000
    examples of 3 classes). The REST writer makes its JSON from the arrays (in
    a worker process when large); the gRPC message is filled from
    :meth:`pairs`.

    Attributes:
        labels: ``[examples, classes]`` of ``bytes`` or ``str``; ``None`` when
            the signature has no ``classes`` output (every label ``""``).
        scores: ``[examples, classes]`` floats already rounded through float32;
            ``None`` when the signature has no ``scores`` output (every score
            ``0.0``). TF Serving leaves either unset in those cases.
        examples: How many examples were classified.
        classes: How many classes each example has.
    """

    labels: Tensor | None
    scores: Tensor | None
    examples: int
    classes: int

    @property
    def size(self) -> int:
        """How many ``(label, score)`` pairs the answer holds."""
        return self.examples * self.classes

    def pairs(self) -> list[list[tuple[str, float]]]:
        """One list of ``(label, score)`` per example."""
        labels: list[list[str]] = (
            [[text_of(value) for value in row] for row in self.labels.tolist()]
            if self.labels is not None
            else [[""] * self.classes for _ in range(self.examples)]
        )
        scores: list[list[float]] = (
            self.scores.tolist()
            if self.scores is not None
            else [[0.0] * self.classes for _ in range(self.examples)]
        )
        return [
            list(zip(label_row, score_row, strict=True))
            for label_row, score_row in zip(labels, scores, strict=True)
        ]


def text_of(value: object) -> str:
    """A class label as text (``bytes`` decoded as UTF-8, invalid bytes replaced)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


@dataclass(frozen=True, slots=True)
class ClassifyResponse:
    """The classes of each example and their scores."""

    spec: ResolvedSpec
    results: Classifications


@dataclass(frozen=True, slots=True)
class RegressResponse:
    """One regression value per example.

    Attributes:
        results: ``[examples]`` float32, the values the answers carry, kept as
            the model's array until a transport writes them (a list of 8 Mi
            Python floats took the GIL in steps for about a second).
    """

    spec: ResolvedSpec
    results: Tensor


@dataclass(frozen=True, slots=True)
class InferenceTask:
    """One task of a MultiInference call.

    ``method_name`` is ``CLASSIFY_METHOD`` or ``REGRESS_METHOD``.
    """

    spec: ModelSpec
    method_name: str


@dataclass(frozen=True, slots=True)
class MultiInferenceRequest:
    """Several classify/regress tasks of one model on the same examples."""

    tasks: tuple[InferenceTask, ...]
    examples: Examples
    context: Example | None = None


@dataclass(frozen=True, slots=True)
class MultiInferenceResponse:
    """One result per task, in task order."""

    results: list[ClassifyResponse | RegressResponse]


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """A signature input or output.

    Attributes:
        name: The graph tensor name (``"x:0"``) for SavedModels, the key for
            scikit-learn models.
        dtype: TensorFlow dtype enum name, e.g. ``"DT_FLOAT"``.
        shape: Dimensions with ``-1`` for unknown ones; ``None`` = unknown rank.
    """

    name: str
    dtype: str
    shape: tuple[int, ...] | None


@dataclass(frozen=True, slots=True)
class SignatureInfo:
    """A signature def: its method name, inputs, outputs and default inputs."""

    method_name: str
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]
    defaults: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """GetModelMetadata's answer: every signature of the resolved version."""

    spec: ResolvedSpec
    signatures: dict[str, SignatureInfo]


@dataclass(frozen=True, slots=True)
class VersionStatus:
    """One row of GetModelStatus.

    Attributes:
        version: The version number.
        state: The life-cycle state.
        error_code: ``grpc.StatusCode`` numeric value (``code.value[0]``); 0 = OK.
        error_message: Empty unless the version failed (state END with an error).
    """

    version: int
    state: VersionState
    error_code: int = 0
    error_message: str = ""
