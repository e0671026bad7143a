"""Classify, Regress and MultiInference results taken apart into arrays and a
few small values, and put back together, so that an answer written in a JSON
worker gets its results through a shared memory segment
(:mod:`servekit_protocol.segment_answers`) rather than pickled through the
pool's pipe.

Through the pipe, the pool's feeder thread in the server pickles the whole
argument in one call with the GIL held: a regression list of 8 Mi values, or
a classifier's labels (one row broadcast to every example pickles as a copy a
pair), held the event loop as long. Here the scores, the labels (one row
when every example shares it) and the regression values (the runtime's
float32 array, never a list) are arrays the segment carries. Labels held as Python objects (a TensorFlow model's
``classes`` output, ``bytes``) travel as a buffer and offsets
(:mod:`~modelserver.protocol.labelbuffers`), encoded in a thread; only an
object array mixing other kinds of labels is still pickled.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelserver.protocol import labelbuffers
from modelserver.types import (
    Classifications,
    ClassifyResponse,
    MultiInferenceResponse,
    RegressResponse,
    ResolvedSpec,
)

Array = np.ndarray[Any, Any]

_SCORES = "scores"
_LABELS = "labels"
_LABEL_ROW = "label_row"
_LABEL_DATA = "label_data"
_LABEL_OFFSETS = "label_offsets"
_VALUES = "values"


@dataclass(frozen=True, slots=True)
class ClassificationsShape:
    """What a :class:`~modelserver.types.Classifications` is besides its
    arrays."""

    examples: int
    classes: int
    label_encoding: labelbuffers.LabelEncoding | None = None
    """How the object labels were encoded into a buffer; None when the
    labels are a plain array (or none)."""


async def classification_arrays(
    results: Classifications, prefix: str = ""
) -> tuple[dict[str, Array], ClassificationsShape]:
    """``results``' scores and labels as arrays named from ``prefix``, and the
    rest; :func:`classifications_of` puts them back together. Object labels
    are encoded in a thread."""
    arrays: dict[str, Array] = {}
    if results.scores is not None:
        arrays[prefix + _SCORES] = results.scores
    labels = results.labels
    encoding = None
    if labels is not None and labels.dtype == object:
        encoded = await asyncio.to_thread(labelbuffers.encode_labels, labels)
        if encoded is not None:
            arrays[prefix + _LABEL_DATA] = encoded.data
            arrays[prefix + _LABEL_OFFSETS] = encoded.offsets
            encoding = encoded.encoding
            labels = None
    if labels is not None:
        if labels.ndim == 2 and labels.shape[0] > 1 and labels.strides[0] == 0:
            # A view of one row for every example (a scikit-learn model's
            # classes): written whole, it would be a copy a pair.
            arrays[prefix + _LABEL_ROW] = labels[0].copy()
        else:
            arrays[prefix + _LABELS] = labels
    return arrays, ClassificationsShape(results.examples, results.classes, encoding)


def classifications_of(
    arrays: dict[str, Array], shape: ClassificationsShape, prefix: str = ""
) -> Classifications:
    """The :class:`~modelserver.types.Classifications` that
    :func:`classification_arrays` took apart."""
    labels = arrays.get(prefix + _LABELS)
    row = arrays.get(prefix + _LABEL_ROW)
    if row is not None:
        labels = np.broadcast_to(row, (shape.examples, shape.classes))
    if shape.label_encoding is not None:
        encoded = labelbuffers.EncodedLabels(
            arrays[prefix + _LABEL_DATA],
            arrays[prefix + _LABEL_OFFSETS],
            shape.label_encoding,
        )
        labels = labelbuffers.decode_labels(encoded, shape.examples, shape.classes)
    return Classifications(
        labels, arrays.get(prefix + _SCORES), shape.examples, shape.classes
    )


def regression_arrays(values: Array, prefix: str = "") -> dict[str, Array]:
    """``values`` (the float32 array of a
    :class:`~modelserver.types.RegressResponse`) named from ``prefix``, as
    :func:`regression_values` reads them."""
    return {prefix + _VALUES: values}


def regression_values(arrays: dict[str, Array], prefix: str = "") -> Array:
    """The values :func:`regression_arrays` put in ``arrays`` at ``prefix``."""
    return arrays[prefix + _VALUES]


@dataclass(frozen=True, slots=True)
class TaskShape:
    """A MultiInference task's result besides its arrays: its spec, and the
    shape of its classifications (None for regression values)."""

    spec: ResolvedSpec
    classifications: ClassificationsShape | None


async def multi_inference_arrays(
    response: MultiInferenceResponse,
) -> tuple[dict[str, Array], list[TaskShape]]:
    """Every task's arrays, named by the task's index, and the rest."""
    arrays: dict[str, Array] = {}
    tasks = []
    for index, item in enumerate(response.results):
        prefix = f"{index}."
        if isinstance(item, ClassifyResponse):
            taken, shape = await classification_arrays(item.results, prefix)
            arrays.update(taken)
            tasks.append(TaskShape(item.spec, shape))
        else:
            arrays.update(regression_arrays(item.results, prefix))
            tasks.append(TaskShape(item.spec, None))
    return arrays, tasks


def multi_inference_of(
    arrays: dict[str, Array], tasks: list[TaskShape]
) -> MultiInferenceResponse:
    """The MultiInferenceResponse that :func:`multi_inference_arrays` took
    apart."""
    results: list[ClassifyResponse | RegressResponse] = []
    for index, task in enumerate(tasks):
        prefix = f"{index}."
        if task.classifications is not None:
            results.append(
                ClassifyResponse(
                    task.spec, classifications_of(arrays, task.classifications, prefix)
                )
            )
        else:
            results.append(
                RegressResponse(task.spec, regression_values(arrays, prefix))
            )
    return MultiInferenceResponse(results)
