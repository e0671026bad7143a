"""The scikit-learn runtime: an estimator described by its ``servekit.json``.

The estimator is loaded by :func:`load_estimator` (``modelregistry.load_model``):
the version folder is verified against the manifest first (every file listed and
matching its sha256, nothing unlisted), its own modules import only from their
checked bytes, a pickle's ``__main__`` names resolve to the modules the manifest
maps them to, and a ``.skops`` file loads only the types its manifest trusts.

Inputs come in one of two layouts, chosen from the manifest:

- *columns*: one input per feature, each of shape ``[-1]`` (``[-1, 1]`` accepted),
  converted to the feature's dtype and assembled into a ``pandas.DataFrame`` in the
  manifest's column order (pipelines with a ``ColumnTransformer``);
- *matrix*: a single rank-2 input ``[-1, n_features]`` passed as a numeric array
  (plain estimators fitted without feature names).

Signatures map to estimator methods by output alias: ``predictions`` ->
``predict``, ``probabilities`` and ``scores`` -> ``predict_proba``, ``classes`` ->
the manifest's class labels. ``:classify`` answers ``(class, probability)`` pairs
for every class; ``:regress`` answers ``predict`` as floats.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from modelregistry import (
    IntegrityError,
    Manifest,
    ManifestError,
    MissingCode,
    load_model,
)
from servekit_protocol.serving import DEFAULT_SIGNATURE

from modelserver import examplecolumns, warning_filters
from modelserver.errors import (
    IntegrityFailure,
    InternalError,
    InvalidInput,
    LoadError,
    ServingError,
    SignatureNotFound,
)
from modelserver.runtimes.base import (
    CLASSIFY_CLASSES,
    CLASSIFY_SCORES,
    PreparedCall,
    Runtime,
    classification_results,
    complete_inputs,
    merge_examples,
    regression_results,
    select_outputs,
)
from modelserver.runtimes.frames import (
    STRING,
    block_layout,
    build_frame,
    column_array,
    convert_column,
    to_bytes_array,
)
from modelserver.runtimes.sklearn_signatures import (
    PREDICTIONS,
    PROBABILITIES,
    SUPPORTED_OUTPUTS,
    matrix_input,
    signatures_from_manifest,
)
from modelserver.types import (
    Classifications,
    Example,
    ExampleColumns,
    Examples,
    SignatureInfo,
    Tensor,
)


def load_estimator(path: Path, manifest: Manifest) -> Any:
    """Verify a version folder and load its estimator, as every serving path must.

    Raises:
        IntegrityFailure: The folder breaks a rule of the registry's verification.
        LoadError: The estimator cannot be loaded or has no ``predict``.
    """
    try:
        estimator = load_model(path, manifest)
    except IntegrityError as exc:
        raise IntegrityFailure(str(exc)) from exc
    except (ManifestError, MissingCode) as exc:
        raise LoadError(str(exc)) from exc
    except Exception as exc:  # unpickling runs arbitrary code: report anything
        raise LoadError(
            f"Cannot load {path / manifest.artifact}: {type(exc).__name__}: {exc}"
        ) from exc
    if not hasattr(estimator, "predict"):
        raise LoadError(
            f"{path / manifest.artifact}: {type(estimator).__name__} has no "
            "predict method"
        )
    return estimator


class SklearnRuntime(Runtime):
    """A loaded scikit-learn estimator or pipeline."""

    def __init__(
        self,
        *,
        name: str,
        version: int,
        path: Path,
        manifest: Manifest,
        estimator: Any,
        method_name_check: bool = False,
        own_warning_filters: bool = False,
    ) -> None:
        self.manifest = manifest
        self.estimator = estimator
        self._own_warning_filters = own_warning_filters
        self._feature_dtypes: dict[str, str] = {
            feature.name: feature.dtype for feature in manifest.features
        }
        self._feature_order = [feature.name for feature in manifest.features]
        self._feature_index = pd.Index(self._feature_order)
        self._blocks = block_layout(self._feature_order, self._feature_dtypes)
        signatures = signatures_from_manifest(manifest)
        super().__init__(
            name=name,
            version=version,
            path=path,
            signatures=signatures,
            method_name_check=method_name_check,
        )
        self._matrix_inputs = {
            key: matrix_input(info, self._feature_dtypes)
            for key, info in signatures.items()
        }
        self._output_dtypes = {
            (key, alias): spec.dtype
            for key, signature in manifest.signatures.items()
            for alias, spec in signature.outputs.items()
        }
        self._has_proba = hasattr(estimator, "predict_proba")
        self._classes = self._class_labels()
        self._check_outputs()

    @classmethod
    def load(
        cls,
        *,
        name: str,
        version: int,
        path: Path,
        manifest: Manifest,
        method_name_check: bool = False,
        own_warning_filters: bool = False,
    ) -> SklearnRuntime:
        """Verify and load a version (see :func:`load_estimator`).

        Raises:
            IntegrityFailure: The folder breaks a rule of the registry's verification.
            LoadError: The estimator cannot be loaded or does not fit the manifest.
        """
        estimator = load_estimator(path, manifest)
        return cls(
            name=name,
            version=version,
            path=path,
            manifest=manifest,
            estimator=estimator,
            method_name_check=method_name_check,
            own_warning_filters=own_warning_filters,
        )

    def _class_labels(self) -> list[str] | None:
        # The estimator's classes_ give predict_proba's column order; the
        # manifest's list is only a fallback for estimators without it.
        classes = getattr(self.estimator, "classes_", None)
        if classes is not None:
            return [_label_text(value) for value in np.asarray(classes).tolist()]
        if self.manifest.classes is not None:
            return list(self.manifest.classes)
        return None

    def _check_outputs(self) -> None:
        for key, signature in self.signatures.items():
            for alias in signature.outputs:
                if alias not in SUPPORTED_OUTPUTS:
                    raise LoadError(
                        f"Signature {key}: output {alias} is not one of "
                        f"{', '.join(SUPPORTED_OUTPUTS)}"
                    )
                needs_proba = alias in (PROBABILITIES, CLASSIFY_SCORES)
                if needs_proba and not self._has_proba:
                    raise LoadError(
                        f"Signature {key}: output {alias} needs predict_proba, which "
                        f"{type(self.estimator).__name__} does not have"
                    )
                if alias == CLASSIFY_CLASSES and self._classes is None:
                    raise LoadError(
                        f"Signature {key}: output {alias} needs the manifest's classes"
                    )

    # --- requests -----------------------------------------------------------------

    def prepare_predict(
        self,
        signature_name: str,
        inputs: Mapping[str, Tensor],
        output_filter: tuple[str, ...],
    ) -> PreparedCall:
        key, signature = self.predict_signature(signature_name)
        complete = complete_inputs(signature, inputs)
        columns, rows = self._coerce(key, signature, complete)
        return PreparedCall(
            key, columns, select_outputs(signature, output_filter), rows
        )

    def prepare_classify(
        self, signature_name: str, examples: Examples, context: Example | None
    ) -> PreparedCall:
        key, signature = self.signature_for_examples(signature_name)
        if not self._has_proba or self._classes is None:
            raise InvalidInput(
                "Expected classification signature outputs to contain at least one "
                f'of "{CLASSIFY_CLASSES}" or "{CLASSIFY_SCORES}". Signature was: '
                f"{key}"
            )
        columns, rows = self._columns_from_examples(key, signature, examples, context)
        return PreparedCall(key, columns, (PROBABILITIES,), rows)

    def prepare_regress(
        self, signature_name: str, examples: Examples, context: Example | None
    ) -> PreparedCall:
        key, signature = self.signature_for_examples(signature_name)
        columns, rows = self._columns_from_examples(key, signature, examples, context)
        return PreparedCall(key, columns, (PREDICTIONS,), rows)

    def signature_for_examples(self, signature_name: str) -> tuple[str, SignatureInfo]:
        """The signature a Classify/Regress call names.

        Raises:
            SignatureNotFound: No such signature.
        """
        key = signature_name or DEFAULT_SIGNATURE
        signature = self.signatures.get(key)
        if signature is None:
            raise SignatureNotFound(f"No signature was found with the name: {key}")
        return key, signature

    def to_classifications(
        self, call: PreparedCall, outputs: Mapping[str, Tensor]
    ) -> Classifications:
        probabilities = outputs[PROBABILITIES]
        assert self._classes is not None
        labels = np.empty(len(self._classes), dtype=object)
        labels[:] = self._classes
        # Every example has the same labels: a view, not a copy per example.
        return classification_results(
            np.broadcast_to(labels, probabilities.shape), probabilities, _rows(call)
        )

    def to_regressions(
        self, call: PreparedCall, outputs: Mapping[str, Tensor]
    ) -> Tensor:
        predictions = outputs[PREDICTIONS]
        if predictions.dtype.kind in "iub":
            predictions = predictions.astype(np.float64)
        return regression_results(predictions, _rows(call))

    # --- execution ----------------------------------------------------------------

    def run(self, call: PreparedCall) -> dict[str, Tensor]:
        if self._own_warning_filters:
            # Model code imported at load time may have added filters again.
            warning_filters.ensure()
        features = self._features(call)
        outputs: dict[str, Tensor] = {}
        probabilities: Tensor | None = None
        try:
            for alias in call.output_keys:
                if alias == PREDICTIONS:
                    outputs[alias] = self._typed_output(
                        call.signature_name, alias, self.estimator.predict(features)
                    )
                elif alias in (PROBABILITIES, CLASSIFY_SCORES):
                    if probabilities is None:
                        probabilities = np.asarray(
                            self.estimator.predict_proba(features)
                        )
                    outputs[alias] = probabilities
                elif alias == CLASSIFY_CLASSES:
                    rows = _rows_of(features)
                    assert self._classes is not None
                    labels = np.empty((rows, len(self._classes)), dtype=object)
                    labels[:] = [label.encode() for label in self._classes]
                    outputs[alias] = labels
        except ServingError:
            raise
        except (ValueError, TypeError, KeyError) as exc:
            # The estimator refused the values (unknown category, NaN...).
            raise InvalidInput(f"{type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            raise InternalError(f"{type(exc).__name__}: {exc}") from exc
        return outputs

    def _features(self, call: PreparedCall) -> Any:
        matrix_input = self._matrix_inputs.get(call.signature_name)
        if matrix_input is not None:
            return call.inputs[matrix_input]
        return build_frame(
            call.inputs, self._feature_order, self._blocks, self._feature_index
        )

    def _typed_output(self, key: str, alias: str, values: Any) -> Tensor:
        array = np.asarray(values)
        dtype = self._output_dtypes.get((key, alias))
        if dtype == STRING or (dtype is None and array.dtype.kind in "OU"):
            return to_bytes_array(array)
        if dtype is not None and array.dtype.kind in "biuf":
            return array.astype(dtype, copy=False)
        return array

    def close(self) -> None:
        self.estimator = None

    # --- conversion -------------------------------------------------------------

    def _coerce(
        self, key: str, signature: SignatureInfo, inputs: Mapping[str, Tensor]
    ) -> tuple[dict[str, Tensor], int]:
        matrix_input = self._matrix_inputs.get(key)
        if matrix_input is not None:
            value = inputs[matrix_input]
            info = signature.inputs[matrix_input]
            if value.ndim != 2 or (
                info.shape is not None
                and info.shape[1] != -1
                and value.shape[1] != info.shape[1]
            ):
                expected = list(info.shape) if info.shape is not None else "rank 2"
                raise InvalidInput(
                    f"Input {matrix_input}: expected shape {expected}, got "
                    f"{list(value.shape)}"
                )
            return {matrix_input: convert_column(matrix_input, value, "float64")}, int(
                value.shape[0]
            )
        columns: dict[str, Tensor] = {}
        rows: int | None = None
        for alias, value in inputs.items():
            if value.ndim == 2 and value.shape[1] == 1:
                value = value.reshape(-1)
            elif value.ndim != 1:
                raise InvalidInput(
                    f"Input {alias}: expected one value per row (shape [-1]), got "
                    f"shape {list(value.shape)}"
                )
            if rows is None:
                rows = int(value.shape[0])
            elif value.shape[0] != rows:
                raise InvalidInput(
                    f"Input {alias} has {value.shape[0]} rows but the others have "
                    f"{rows}"
                )
            columns[alias] = convert_column(
                alias, value, self._feature_dtypes.get(alias, "float64")
            )
        if not rows:
            raise InvalidInput("Input is empty.")
        return columns, rows

    def _columns_from_examples(
        self,
        key: str,
        signature: SignatureInfo,
        examples: Examples,
        context: Example | None,
    ) -> tuple[dict[str, Tensor], int]:
        if isinstance(examples, ExampleColumns):
            # Decoded in a worker: whole columns, checked without a dict each.
            if not examples.rows:
                raise InvalidInput("Input is empty.")
            self._refuse_matrix(key)
            singles = examplecolumns.single_values(examples, list(signature.inputs))
            return self._coerce(
                key,
                signature,
                {
                    alias: column_array(array.tolist())
                    if array.dtype == object
                    else array
                    for alias, array in singles.items()
                },
            )
        merged = merge_examples(examples, context)
        self._refuse_matrix(key)
        values: dict[str, list[Any]] = {alias: [] for alias in signature.inputs}
        for index, example in enumerate(merged):
            for alias, column in values.items():
                feature = example.get(alias)
                if feature is None:
                    raise InvalidInput(f"Example {index} has no feature {alias}")
                if len(feature) != 1:
                    raise InvalidInput(
                        f"Example {index}: feature {alias} has {len(feature)} "
                        "values; expected 1"
                    )
                column.append(feature[0])
        arrays = {alias: column_array(column) for alias, column in values.items()}
        return self._coerce(key, signature, arrays)

    def _refuse_matrix(self, key: str) -> None:
        if self._matrix_inputs.get(key) is not None:
            raise InvalidInput(
                f"Signature {key} takes one unnamed feature matrix; tf.Examples "
                "need named features"
            )


def _rows(call: PreparedCall) -> int:
    assert call.batch_size is not None  # sklearn calls always have rows
    return call.batch_size


def _rows_of(features: Any) -> int:
    return int(features.shape[0])


def _label_text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)
