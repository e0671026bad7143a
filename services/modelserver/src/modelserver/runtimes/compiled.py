"""The compiled scikit-learn runtime: a version served from ``compiled/``.

A version whose manifest records a passed parity gate is served by its compiled
model (:mod:`modelserver.compiled`): the request's columns go straight to the
plan's numpy kernels and ONNX Runtime, with no DataFrame and no unpickling. Every
other scikit-learn version, and one whose compiled model does not load, is served
from the pickle by :class:`SklearnRuntime`; a version whose files break the
registry's verification is refused by that loader, as any other.

Requests are prepared, validated and answered exactly as for the pickle (the class
extends :class:`SklearnRuntime`), so v1, v2, typed endpoints, gRPC, batching,
``predict_proba`` and classify behave the same; only the call to the model differs.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

from modelregistry import Manifest, load_model, version_problems

from modelserver.compiled import CompiledModel, CompileError
from modelserver.compiled.hybrid import find_step
from modelserver.runtimes.base import PreparedCall
from modelserver.runtimes.sklearn import SklearnRuntime
from modelserver.types import Tensor

logger = logging.getLogger(__name__)


class ColumnBatch(dict[str, Tensor]):
    """A call's columns by feature name, with the row count the runtime asks for."""

    def __init__(self, columns: dict[str, Tensor], rows: int) -> None:
        super().__init__(columns)
        self.shape = (rows,)


class CompiledSklearnRuntime(SklearnRuntime):
    """A scikit-learn version answered by its compiled model."""

    compiled: CompiledModel

    def _features(self, call: PreparedCall) -> Any:
        matrix_input = self._matrix_inputs.get(call.signature_name)
        if matrix_input is not None:
            return call.inputs[matrix_input]
        rows = call.batch_size
        if rows is None:
            rows = len(next(iter(call.inputs.values()))) if call.inputs else 0
        return ColumnBatch(call.inputs, rows)


def load_sklearn(
    *,
    name: str,
    version: int,
    path: Path,
    manifest: Manifest,
    method_name_check: bool = False,
    own_warning_filters: bool = False,
) -> SklearnRuntime:
    """The compiled runtime when the gate passed and its files check out, else the
    pickle's.

    Raises:
        IntegrityFailure, LoadError: as :meth:`SklearnRuntime.load`, when the pickle
            is loaded.
    """
    compiled = _compiled_model(name, version, path, manifest)
    if compiled is None:
        return SklearnRuntime.load(
            name=name,
            version=version,
            path=path,
            manifest=manifest,
            method_name_check=method_name_check,
            own_warning_filters=own_warning_filters,
        )
    runtime = CompiledSklearnRuntime(
        name=name,
        version=version,
        path=path,
        manifest=manifest,
        estimator=compiled,
        method_name_check=method_name_check,
        own_warning_filters=own_warning_filters,
    )
    runtime.compiled = compiled
    logger.info(
        "serving %s version %s from its compiled model (%s)",
        name,
        version,
        manifest.compiled.mode if manifest.compiled else "?",
    )
    return runtime


def _compiled_model(
    name: str, version: int, path: Path, manifest: Manifest
) -> CompiledModel | None:
    verdict = manifest.compiled
    if verdict is None or verdict.status != "passed":
        return None
    if verdict.plan is None or verdict.model is None:
        return None
    listed = {verdict.plan, verdict.model} <= set(manifest.files)
    problems = version_problems(path, manifest)
    if problems or not listed:
        # The pickle's loader refuses the version with the same problems, so the
        # failure is reported once, as for any other version.
        logger.warning(
            "%s version %s: the compiled files do not check out (%s)",
            name,
            version,
            "; ".join(problems) or "not in the manifest",
        )
        return None
    source = None
    if CompiledModel.needs_pickle(path):
        # A hybrid plan: the steps it runs in Python come from the pickle, which
        # load_model unpickles only when its digest matches the manifest.
        try:
            estimator = load_model(path, manifest)
        except Exception as exc:  # the pickle's loader reports it again, in full
            logger.warning(
                "%s version %s: the pickle of the hybrid plan does not load (%s)",
                name,
                version,
                exc,
            )
            return None
        source = partial(find_step, estimator)
    try:
        return CompiledModel.load(path, source)
    except CompileError as exc:
        logger.warning(
            "%s version %s: compiled model does not load (%s); serving the pickle",
            name,
            version,
            exc,
        )
        return None
