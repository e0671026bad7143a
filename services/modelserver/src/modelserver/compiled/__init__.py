"""Compiled scikit-learn models and the parity gate that lets them serve.

A fitted pipeline becomes a *plan* of numpy kernels (``plan.py``, written by
``converters.py``) and an ONNX tree ensemble run by ONNX Runtime (``trees.py``);
``model.py`` runs the two on a request's columns, ``parity.py`` and ``compiler.py``
decide whether the result answers as the pickle does. A step no converter takes
runs in Python, from the pickle, in a hybrid plan (``hybrid.py``).
"""

from modelserver.compiled.compiler import CompileResult, compile_model, runtime_name
from modelserver.compiled.converters import Context, register_converter
from modelserver.compiled.errors import CompileError
from modelserver.compiled.model import (
    MODEL_FILE,
    PLAN_FILE,
    CompiledClassifier,
    CompiledModel,
)

__all__ = [
    "MODEL_FILE",
    "PLAN_FILE",
    "CompileError",
    "CompileResult",
    "CompiledClassifier",
    "CompiledModel",
    "Context",
    "compile_model",
    "register_converter",
    "runtime_name",
]
