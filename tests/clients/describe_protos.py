"""Describe an official OIP proto module, and encode messages with its classes.

Run with .venv-clients/bin/python (tritonclient's and kserve's modules cannot be
imported into the main environment, nor both into one process). Reads from stdin
``{"module": "...", "cases": [{"message": "Name.Nested", "text": "..."}]}`` and
writes ``{"messages": {...}, "enums": {...}, "encoded": ["hex", ...]}``: every
message's fields (number, type, repeated, packed, JSON name, oneof, type name
without the package) and each case's text-format message serialized
deterministically by the official class.
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

from google.protobuf import text_format


def _signature(field: Any, package: str) -> list[Any]:
    target = field.message_type or field.enum_type
    type_name = target.full_name.removeprefix(package) if target else None
    return [
        field.number,
        field.type,
        field.is_repeated,
        bool(field.is_packed),
        field.json_name,
        field.containing_oneof.name if field.containing_oneof else None,
        type_name,
    ]


def _walk(descriptor: Any, prefix: str, package: str, out: dict[str, Any]) -> None:
    name = f"{prefix}{descriptor.name}"
    out[name] = {field.name: _signature(field, package) for field in descriptor.fields}
    for nested in descriptor.nested_types:
        _walk(nested, f"{name}.", package, out)


def _class(module: Any, dotted: str) -> Any:
    found = module
    for part in dotted.split("."):
        found = getattr(found, part)
    return found


def main() -> None:
    query = json.load(sys.stdin)
    module = importlib.import_module(query["module"])
    file = module.DESCRIPTOR
    package = f"{file.package}."
    messages: dict[str, Any] = {}
    enums: dict[str, Any] = {}
    for descriptor in file.message_types_by_name.values():
        _walk(descriptor, "", package, messages)
    for enum in file.enum_types_by_name.values():
        enums[enum.name] = [[value.name, value.number] for value in enum.values]
    for name in list(messages):
        for enum in _class(module, name).DESCRIPTOR.enum_types:
            enums[f"{name}.{enum.name}"] = [[v.name, v.number] for v in enum.values]
    encoded = []
    for case in query.get("cases", []):
        message = text_format.Parse(case["text"], _class(module, case["message"])())
        encoded.append(message.SerializeToString(deterministic=True).hex())
    json.dump({"messages": messages, "enums": enums, "encoded": encoded}, sys.stdout)


if __name__ == "__main__":
    main()
