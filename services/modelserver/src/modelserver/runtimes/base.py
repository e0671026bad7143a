"""The Runtime interface every framework implements, and TF Serving's shared rules.

A runtime is one loaded model version. Its methods are synchronous and may block:
the dataplane calls ``prepare_*`` on the event loop (cheap validation, no model
code) and ``run`` in a thread pool, directly or through the batcher. ``run`` is
batchable: calls with the same ``signature_name`` and ``output_keys`` can be
merged along axis 0 of their inputs and the outputs split back by rows.

The request checks and the classify/regress result rules below reproduce
``predict_util.cc``, ``classifier.cc`` and ``regressor.cc`` of TF Serving,
including their error messages.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from servekit_protocol.serving import DEFAULT_SIGNATURE

from modelserver import examplecolumns
from modelserver.errors import (
    InvalidInput,
    PredictSignatureNotFound,
    SignatureNotFound,
)
from modelserver.types import (
    CLASSIFY_METHOD,
    PREDICT_METHOD,
    REGRESS_METHOD,
    Classifications,
    Example,
    ExampleColumns,
    Examples,
    SignatureInfo,
    Tensor,
)

CLASSIFY_INPUTS = "inputs"
CLASSIFY_CLASSES = "classes"
CLASSIFY_SCORES = "scores"
REGRESS_INPUTS = "inputs"
REGRESS_OUTPUTS = "outputs"


@dataclass(frozen=True, slots=True)
class PreparedCall:
    """A validated call, ready for :meth:`Runtime.run`.

    Attributes:
        signature_name: The signature key (never empty).
        inputs: Tensors by input alias, in the signature's input order.
        output_keys: The output aliases to compute, in answer order.
        batch_size: Rows shared by every input along axis 0, or ``None`` when the
            call cannot be merged with others (no inputs, scalars, ragged rows).
    """

    signature_name: str
    inputs: dict[str, Tensor]
    output_keys: tuple[str, ...]
    batch_size: int | None


class Runtime(ABC):
    """One loaded model version."""

    def __init__(
        self,
        *,
        name: str,
        version: int,
        path: Path,
        signatures: Mapping[str, SignatureInfo],
        method_name_check: bool = False,
    ) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.signatures = dict(signatures)
        self.method_name_check = method_name_check

    def signature(self, signature_name: str) -> tuple[str, SignatureInfo]:
        """The signature a REST request names (``""`` = ``serving_default``).

        Raises:
            SignatureNotFound: No such signature.
        """
        key = signature_name or DEFAULT_SIGNATURE
        info = self.signatures.get(key)
        if info is None:
            raise SignatureNotFound(
                f'Serving signature name: "{key}" not found in signature def'
            )
        return key, info

    def predict_signature(self, signature_name: str) -> tuple[str, SignatureInfo]:
        """The signature a Predict call runs.

        Raises:
            PredictSignatureNotFound: No such signature.
            InternalError: The method-name check is on and the method is unknown.
        """
        key = signature_name or DEFAULT_SIGNATURE
        info = self.signatures.get(key)
        if info is None:
            raise PredictSignatureNotFound(f'Serving signature key "{key}" not found.')
        if self.method_name_check and info.method_name not in (
            PREDICT_METHOD,
            CLASSIFY_METHOD,
            REGRESS_METHOD,
        ):
            raise InvalidInput(
                "Expected prediction signature method_name to be one of "
                f"{{{PREDICT_METHOD}, {CLASSIFY_METHOD}, {REGRESS_METHOD}}}. "
                f"Was: {info.method_name}"
            )
        return key, info

    @abstractmethod
    def prepare_predict(
        self,
        signature_name: str,
        inputs: Mapping[str, Tensor],
        output_filter: tuple[str, ...],
    ) -> PreparedCall:
        """Validate a Predict call.

        Raises:
            PredictSignatureNotFound: No such signature.
            InvalidInput: Missing, extra or mistyped inputs; unknown outputs.
        """

    @abstractmethod
    def prepare_classify(
        self, signature_name: str, examples: Examples, context: Example | None
    ) -> PreparedCall:
        """Turn a Classify call's examples into a call.

        Raises:
            SignatureNotFound: No such signature.
            InvalidInput: The signature cannot classify or the examples are bad.
        """

    @abstractmethod
    def prepare_regress(
        self, signature_name: str, examples: Examples, context: Example | None
    ) -> PreparedCall:
        """Turn a Regress call's examples into a call.

        Raises:
            SignatureNotFound: No such signature.
            InvalidInput: The signature cannot regress or the examples are bad.
        """

    @abstractmethod
    def run(self, call: PreparedCall) -> dict[str, Tensor]:
        """Execute a (possibly merged) call; blocking, thread-safe.

        Raises:
            ServingError: The model rejected the inputs or failed.
        """

    def to_classifications(
        self, call: PreparedCall, outputs: Mapping[str, Tensor]
    ) -> Classifications:
        """Turn ``classes``/``scores`` outputs into per-example results.

        Raises:
            InvalidInput: The outputs do not have the classification shapes.
        """
        return classification_results(
            outputs.get(CLASSIFY_CLASSES), outputs.get(CLASSIFY_SCORES), _rows(call)
        )

    def to_regressions(
        self, call: PreparedCall, outputs: Mapping[str, Tensor]
    ) -> Tensor:
        """Turn the ``outputs`` output into one float32 per example.

        Raises:
            InvalidInput: The output does not have the regression shape.
        """
        return regression_results(outputs[REGRESS_OUTPUTS], _rows(call))

    @abstractmethod
    def close(self) -> None:
        """Release the model's resources (after the last request finished)."""


def _rows(call: PreparedCall) -> int:
    if call.batch_size is not None:
        return call.batch_size
    first = next(iter(call.inputs.values()))
    return int(first.shape[0])


def complete_inputs(
    signature: SignatureInfo, inputs: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Check request aliases against a signature and fill in its defaults.

    Returns the inputs in the signature's order.

    Raises:
        InvalidInput: Too many or too few inputs, or an unknown alias.
    """
    expected = signature.inputs
    if len(inputs) > len(expected) or (
        len(inputs) < len(expected) and not signature.defaults
    ):
        sent = sorted(inputs)
        wanted = sorted(expected)
        extra = sorted(set(sent) - set(wanted))
        missing = sorted(set(wanted) - set(sent))
        raise InvalidInput(
            f"input size does not match signature: {len(sent)}!={len(wanted)} "
            f"len({{{','.join(sent)}}}) != len({{{','.join(wanted)}}}). "
            f"Sent extra: {{{','.join(extra)}}}. "
            f"Missing but required: {{{','.join(missing)}}}."
        )
    for alias in inputs:
        if alias not in expected:
            raise InvalidInput(
                f"input tensor alias not found in signature: {alias}. Inputs "
                f"expected to be in the set {{{','.join(sorted(expected))}}}."
            )
    complete: dict[str, Tensor] = {}
    for alias in expected:
        value = inputs.get(alias)
        if value is None:
            value = signature.defaults.get(alias)
            if value is None:
                raise InvalidInput(
                    f"Missing input tensor alias {alias} and the signature has "
                    "no default for it."
                )
        complete[alias] = value
    return complete


def select_outputs(
    signature: SignatureInfo, output_filter: tuple[str, ...]
) -> tuple[str, ...]:
    """The output aliases a Predict call asks for (all when the filter is empty).

    Raises:
        InvalidInput: An unknown or repeated alias.
    """
    if not output_filter:
        return tuple(signature.outputs)
    seen: set[str] = set()
    for alias in output_filter:
        if alias not in signature.outputs:
            raise InvalidInput(
                f"output tensor alias not found in signature: {alias} Outputs "
                f"expected to be in the set {{{','.join(sorted(signature.outputs))}}}."
            )
        if alias in seen:
            raise InvalidInput(f"duplicate output tensor alias: {alias}")
        seen.add(alias)
    return output_filter


def common_batch_size(inputs: Mapping[str, Tensor]) -> int | None:
    """Rows shared by every input along axis 0, or ``None`` if there is none."""
    size: int | None = None
    for value in inputs.values():
        if value.ndim == 0:
            return None
        if size is None:
            size = int(value.shape[0])
        elif value.shape[0] != size:
            return None
    return size


def check_classify_signature(
    key: str, signature: SignatureInfo, *, method_name_check: bool
) -> None:
    """TF Serving's ``PreProcessClassification`` checks.

    Raises:
        InvalidInput: The signature cannot serve Classify.
    """
    if method_name_check and signature.method_name != CLASSIFY_METHOD:
        raise InvalidInput(
            "Expected classification signature method_name to be "
            f"{CLASSIFY_METHOD}. Was: {signature.method_name}"
        )
    if len(signature.inputs) != 1:
        raise InvalidInput("Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2):
        raise InvalidInput(
            f"Expected one or two output Tensors, found {len(signature.outputs)}"
        )
    if CLASSIFY_INPUTS not in signature.inputs:
        raise InvalidInput(f"No classification inputs found in SignatureDef: {key}")
    if (
        CLASSIFY_CLASSES not in signature.outputs
        and CLASSIFY_SCORES not in signature.outputs
    ):
        raise InvalidInput(
            "Expected classification signature outputs to contain at least one of "
            f'"{CLASSIFY_CLASSES}" or "{CLASSIFY_SCORES}". Signature was: {key}'
        )


def check_regress_signature(
    key: str, signature: SignatureInfo, *, method_name_check: bool
) -> None:
    """TF Serving's ``PreProcessRegression`` checks.

    Raises:
        InvalidInput: The signature cannot serve Regress.
    """
    if method_name_check and signature.method_name != REGRESS_METHOD:
        raise InvalidInput(
            "Expected regression signature method_name to be "
            f"{REGRESS_METHOD}. Was: {signature.method_name}"
        )
    if len(signature.inputs) != 1:
        raise InvalidInput("Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise InvalidInput("Expected one output Tensor.")
    if REGRESS_INPUTS not in signature.inputs:
        raise InvalidInput(f"No regression inputs found in SignatureDef: {key}")
    if REGRESS_OUTPUTS not in signature.outputs:
        raise InvalidInput(f"No regression outputs found in SignatureDef: {key}")


def classification_results(
    classes: Tensor | None, scores: Tensor | None, num_examples: int
) -> Classifications:
    """TF Serving's ``PostProcessClassificationResult``.

    Raises:
        InvalidInput: Wrong ranks, dtypes or batch sizes.
    """
    if classes is not None:
        if classes.ndim != 2:
            raise InvalidInput(
                "Expected Tensor shape: [batch_size num_classes] but got "
                f"{list(classes.shape)}"
            )
        if classes.dtype != object and classes.dtype.kind not in "SU":
            raise InvalidInput(
                f"Expected classes Tensor of DT_STRING. Got: {classes.dtype}"
            )
        if classes.shape[0] != num_examples:
            raise InvalidInput(
                f"Expected classes output batch size of {num_examples}. "
                f"Got: {classes.shape[0]}"
            )
    if scores is not None:
        if scores.ndim != 2:
            raise InvalidInput(
                "Expected Tensor shape: [batch_size num_classes] but got "
                f"{list(scores.shape)}"
            )
        if scores.dtype.kind != "f":
            raise InvalidInput(
                f"Expected scores Tensor of DT_FLOAT. Got: {scores.dtype}"
            )
        if scores.shape[0] != num_examples:
            raise InvalidInput(
                f"Expected scores output batch size of {num_examples}. "
                f"Got: {scores.shape[0]}"
            )
    if (
        classes is not None
        and scores is not None
        and classes.shape[1] != scores.shape[1]
    ):
        raise InvalidInput(
            "Tensors class and score should match in dim_size(1). Got "
            f"{classes.shape[1]} vs. {scores.shape[1]}"
        )
    num_classes = 0
    if classes is not None:
        num_classes = int(classes.shape[1])
    elif scores is not None:
        num_classes = int(scores.shape[1])
    return Classifications(
        labels=classes,
        scores=None if scores is None else scores.astype(np.float32).astype(np.float64),
        examples=num_examples,
        classes=num_classes,
    )


def regression_results(values: Tensor, num_examples: int) -> Tensor:
    """TF Serving's ``PostProcessRegressionResult``: one float32 a example, as
    the answers carry them (proto floats), kept as an array so that no step
    turns millions of them into Python floats with the GIL held.

    Raises:
        InvalidInput: The output is not ``[batch]`` or ``[batch, 1]`` floats.
    """
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
        raise InvalidInput(
            "Expected output Tensor shape to be either [batch_size] or "
            f"[batch_size, 1] but got {list(values.shape)}"
        )
    if values.shape[0] != num_examples:
        raise InvalidInput(
            "Input batch size did not match output batch size: "
            f"{num_examples} vs. {values.shape[0]}"
        )
    if values.dtype.kind != "f":
        raise InvalidInput(f"Expected output Tensor of DT_FLOAT.  Got: {values.dtype}")
    # A copy of its own (never a view of the model's output), contiguous for
    # the answer's segment; numpy casts with the GIL released.
    rounded: Tensor = values.reshape(-1).astype(np.float32)
    return rounded


def merged_examples(
    examples: Examples, context: Example | None
) -> tuple[int, Iterable[Example]]:
    """How many examples there are, and each with the context's features added
    (the example's win), built as they are read: a runtime that keeps each in
    another form (TensorFlow serializes them) never holds all the dicts.

    Raises:
        InvalidInput: There are no examples.
    """
    if isinstance(examples, ExampleColumns):
        if not examples.rows:
            raise InvalidInput("Input is empty.")
        return examples.rows, examplecolumns.iter_examples(examples)
    if not examples:
        raise InvalidInput("Input is empty.")
    if not context:
        return len(examples), examples
    return len(examples), ({**context, **example} for example in examples)


def merge_examples(examples: Examples, context: Example | None) -> list[Example]:
    """Each example with the context's features added (the example's win).

    Raises:
        InvalidInput: There are no examples.
    """
    _, merged = merged_examples(examples, context)
    return merged if isinstance(merged, list) else list(merged)
