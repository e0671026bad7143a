"""Hybrid plans: a step no converter takes runs in Python, the rest compiled.

A preprocessing step without a converter (a user's ``FunctionTransformer`` of an
arbitrary function, an estimator from another library, a setting a converter does
not support) becomes a ``python`` plan step: the plan records where the step sits
in the pipeline, and the compiled model calls that fitted step's own ``transform``,
taken from the version's pickle (whose digest the loader checks first). Every other
step still runs as numpy kernels and the trees on ONNX Runtime, and the parity gate
compares the whole with the pickle, as for a fully compiled plan.

The step gets what it got inside the pickle: a DataFrame with the columns it was
fitted on when it has ``feature_names_in_``, else the matrix.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from modelserver.compiled.errors import CompileError
from modelserver.compiled.plan import Array, Kernel, Spec, StepSource, Value, stack

PYTHON = "python"


def python_step(step: Any, path: str, root: Any, reason: str) -> Spec:
    """The plan step that runs ``step`` itself, found again in ``root`` at load.

    Raises:
        CompileError: ``step`` cannot be found from ``root`` by step names.
    """
    location = locate(root, step)
    if location is None:
        raise CompileError(f"{reason} (and the step cannot run in Python)", step=path)
    names = getattr(step, "feature_names_in_", None)
    return {
        "kind": PYTHON,
        "step": path,
        "class": type(step).__name__,
        "location": location,
        "names": None if names is None else [str(name) for name in names],
        "reason": reason,
    }


def locate(root: Any, target: Any) -> list[str] | None:
    """The names leading from ``root`` to ``target`` through pipelines and column
    transformers, or None when it is not there."""
    if root is target:
        return []
    for name, child in _children(root):
        found = locate(child, target)
        if found is not None:
            return [name, *found]
    return None


def find_step(root: Any, location: list[str]) -> Any:
    """The fitted step at ``location`` (as :func:`locate` wrote it) in ``root``.

    Raises:
        CompileError: The pickle has no step there.
    """
    step = root
    for name in location:
        children = dict(_children(step))
        if name not in children:
            raise CompileError(
                f"the pickle has no step {'/'.join(location)} for the plan's "
                "Python step"
            )
        step = children[name]
    return step


def _children(step: Any) -> Iterator[tuple[str, Any]]:
    steps = getattr(step, "steps", None)
    if isinstance(steps, list):
        yield from ((str(name), child) for name, child in steps)
    fitted = getattr(step, "transformers_", None)
    if isinstance(fitted, list):
        yield from ((str(name), child) for name, child, _columns in fitted)


def python_kernel(spec: Spec, source: StepSource | None) -> Kernel:
    """The kernel of a ``python`` plan step: the fitted step's ``transform``.

    Raises:
        CompileError: No pickle was given to take the step from.
    """
    if source is None:
        raise CompileError(f"the plan runs step {spec['step']} in Python: no pickle")
    step = source(list(spec["location"]))
    names: list[str] | None = spec["names"]

    def run(value: Value, order: list[str]) -> Array:
        given: Any = value
        if isinstance(value, Mapping):
            given = (
                _frame({name: value[name] for name in names})
                if names is not None
                else stack(
                    [value[name] for name in order],
                    any(value[name].dtype.kind in "OUS" for name in order),
                )
            )
        elif names is not None:
            given = _frame({name: value[:, i] for i, name in enumerate(names)})
        return _matrix(step.transform(given))

    return run


def _frame(columns: dict[str, Array]) -> Any:
    # pandas only for the steps that were fitted on a DataFrame.
    import pandas as pd

    return pd.DataFrame(columns, copy=False)


def _matrix(result: Any) -> Array:
    if hasattr(result, "toarray"):
        result = result.toarray()
    elif hasattr(result, "to_numpy"):
        result = result.to_numpy()
    matrix = np.asarray(result)
    if matrix.ndim == 1:
        matrix = matrix[:, np.newaxis]
    return matrix


def python_steps(spec: Spec | None) -> list[str]:
    """The paths of the plan's steps that run in Python, in plan order."""
    if spec is None:
        return []
    if spec["kind"] == PYTHON:
        return [str(spec["step"])]
    found: list[str] = []
    for inner in spec.get("steps", []):
        found += python_steps(inner)
    for branch in spec.get("branches", []):
        found += python_steps(branch["step"])
    return found
