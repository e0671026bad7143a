"""What a job knows of the model's inputs before it reads a row.

The readers use it to type text columns (CSV) the way the signature wants them, and
to decide how a row becomes an instance: an object keyed by input name when the
file has a column for every input, or, when the signature has a single input
the columns do not name, the row's values as one list (a feature matrix, as
Vertex turns CSV rows into arrays) or the one column's value itself.
"""

from __future__ import annotations

from dataclasses import dataclass

FLOAT = "float"
INTEGER = "integer"
BOOLEAN = "boolean"
TEXT = "text"

_KINDS: dict[str, str] = {
    **dict.fromkeys(("float16", "float32", "float64", "bfloat16"), FLOAT),
    **dict.fromkeys(("DT_HALF", "DT_FLOAT", "DT_DOUBLE", "DT_BFLOAT16"), FLOAT),
    **dict.fromkeys(
        ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"),
        INTEGER,
    ),
    **dict.fromkeys(
        (
            "DT_INT8",
            "DT_INT16",
            "DT_INT32",
            "DT_INT64",
            "DT_UINT8",
            "DT_UINT16",
            "DT_UINT32",
            "DT_UINT64",
        ),
        INTEGER,
    ),
    "bool": BOOLEAN,
    "DT_BOOL": BOOLEAN,
    "string": TEXT,
    "DT_STRING": TEXT,
}


def value_kind(dtype: str) -> str:
    """``float``, ``integer``, ``boolean`` or ``text`` for a numpy or TF dtype name."""
    return _KINDS.get(dtype, TEXT)


@dataclass(frozen=True)
class InputSchema:
    """The signature's inputs: name -> value kind, in signature order."""

    signature_name: str
    inputs: dict[str, str]

    def keyed_by(self, columns: list[str]) -> bool:
        """Whether rows with these columns become objects keyed by input name."""
        return all(name in columns for name in self.inputs)

    def single_kind(self) -> str | None:
        """The value kind of the one input, or ``None`` with several inputs."""
        if len(self.inputs) != 1:
            return None
        return next(iter(self.inputs.values()))
