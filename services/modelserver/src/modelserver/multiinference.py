"""MultiInference's rules: which task lists TF Serving accepts, and how the
answers of the tasks are put together."""

from __future__ import annotations

from collections.abc import Sequence

from modelserver.errors import InvalidInput, Unimplemented
from modelserver.runtimes.base import PreparedCall, Runtime
from modelserver.types import (
    CLASSIFY_METHOD,
    REGRESS_METHOD,
    ClassifyResponse,
    MultiInferenceRequest,
    RegressResponse,
    ResolvedSpec,
    Tensor,
)


def check_tasks(request: MultiInferenceRequest) -> None:
    """Refuse what TF Serving's ``RunMultiInference`` refuses.

    Raises:
        InvalidInput: No tasks, an empty or differing model name, or a
            repeated signature.
        Unimplemented: A task's method is neither classify nor regress.
    """
    if not request.tasks:
        raise InvalidInput("MultiInferenceRequest has no tasks.")
    model_name = request.tasks[0].spec.name
    signatures: set[str] = set()
    for task in request.tasks:
        if not task.spec.name:
            raise InvalidInput("Found ModelSpec with an empty model name.")
        if task.spec.name != model_name:
            raise InvalidInput(
                "All ModelSpecs in a MultiInferenceRequest must access the same "
                "model name."
            )
        if task.spec.signature_name in signatures:
            raise InvalidInput(
                f"Duplicate evaluation of signature: {task.spec.signature_name}"
            )
        signatures.add(task.spec.signature_name)
        if task.method_name not in (CLASSIFY_METHOD, REGRESS_METHOD):
            raise Unimplemented(
                f"Unsupported signature method_name: {task.method_name}"
            )


def prepare_tasks(
    request: MultiInferenceRequest, runtime: Runtime
) -> list[tuple[str, PreparedCall]]:
    """Each task's method and prepared call, in order.

    Raises:
        ServingError: A task's signature is missing or does not fit its method.
    """
    calls: list[tuple[str, PreparedCall]] = []
    for task in request.tasks:
        if task.method_name == CLASSIFY_METHOD:
            call = runtime.prepare_classify(
                task.spec.signature_name, request.examples, request.context
            )
        else:
            call = runtime.prepare_regress(
                task.spec.signature_name, request.examples, request.context
            )
        calls.append((task.method_name, call))
    return calls


def task_results(
    name: str,
    version: int,
    runtime: Runtime,
    calls: Sequence[tuple[str, PreparedCall]],
    outputs: Sequence[dict[str, Tensor]],
) -> list[ClassifyResponse | RegressResponse]:
    """The answer of each task from its call's outputs."""
    results: list[ClassifyResponse | RegressResponse] = []
    for (method_name, call), output in zip(calls, outputs, strict=True):
        resolved = ResolvedSpec(name, version, call.signature_name)
        if method_name == CLASSIFY_METHOD:
            results.append(
                ClassifyResponse(resolved, runtime.to_classifications(call, output))
            )
        else:
            results.append(
                RegressResponse(resolved, runtime.to_regressions(call, output))
            )
    return results
