"""Errors of the compiler: a step without a converter, or a plan that cannot run."""

from __future__ import annotations


class CompileError(Exception):
    """A model, or one of its steps, cannot be compiled.

    Attributes:
        step: The pipeline path of the step that failed (``preprocess/clusters/...``),
            or ``None`` when the failure is not one step's.
    """

    def __init__(self, message: str, step: str | None = None) -> None:
        super().__init__(message)
        self.step = step
