"""Compiling scikit-learn versions: at publish (in the draft) and afterwards.

The compiled model and the parity gate's verdict live in the version folder
(``compiled/``) and in its manifest (``compiled``), digested like every other file.
Held-out rows for the gate are kept beside the pickle as ``heldout.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from modelregistry import Draft, IntegrityError, Manifest, Registry, load_model
from rich.console import Console

from servekit.console import CommandError

Mode = Literal["exact", "approximate"]
MODES: tuple[Mode, ...] = ("exact", "approximate")
HELDOUT_FILE = "heldout.json"
COMPILED_FOLDER = "compiled"


def write_heldout(folder: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Store held-out rows (JSON objects) for the gate, in a draft or version."""
    (folder / HELDOUT_FILE).write_text(
        json.dumps(list(rows), allow_nan=False) + "\n", encoding="utf-8"
    )


def read_heldout(folder: Path, manifest: Mapping[str, Any] | Manifest) -> list[Any]:
    """The held-out rows a version lists in its manifest (none when absent)."""
    files = manifest.files if isinstance(manifest, Manifest) else manifest.get("files")
    path = folder / HELDOUT_FILE
    if (files is not None and HELDOUT_FILE not in files) or not path.is_file():
        return []
    rows = json.loads(path.read_text(encoding="utf-8"))
    return rows if isinstance(rows, list) else []


def compile_draft(
    draft: Draft,
    estimator: Any,
    heldout: Sequence[Mapping[str, Any]],
    mode: Mode,
    console: Console | None = None,
) -> dict[str, Any]:
    """Compile a draft's estimator; write ``compiled/`` and the manifest's verdict.

    Returns the verdict. A refused compile writes no files: the pickle serves.
    """
    from modelserver.compiled import compile_model

    fields = draft.manifest
    features = [(f["name"], f["dtype"]) for f in fields.get("features", [])]
    result = compile_model(
        estimator,
        features=features,
        examples=fields.get("examples", []),
        heldout=heldout,
        mode=mode,
        progress=_progress(console),
    )
    for relative, content in result.files.items():
        target = draft.path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    draft.manifest["compiled"] = result.verdict
    return result.verdict


def compile_published(
    registry: Registry,
    name: str,
    version: int,
    mode: Mode,
    console: Console | None = None,
) -> dict[str, Any]:
    """Compile a version already in the registry and record the verdict.

    Raises:
        CommandError: the version is no scikit-learn pickle or cannot be loaded.
    """
    from modelserver.compiled import compile_model

    manifest = registry.manifest(name, version)
    if manifest.framework != "sklearn":
        raise CommandError(f"{name} version {version} is no scikit-learn model")
    folder = registry.version_dir(name, version)
    try:
        estimator = load_model(folder, manifest)
    except IntegrityError as exc:
        raise CommandError(str(exc)) from exc
    except Exception as exc:  # unpickling runs the model's code: report anything
        raise CommandError(
            f"{name} version {version}: cannot load the pickle: {exc}"
        ) from exc
    result = compile_model(
        estimator,
        features=[(f.name, f.dtype) for f in manifest.features],
        examples=manifest.examples,
        heldout=read_heldout(folder, manifest),
        mode=mode,
        progress=_progress(console),
    )
    registry.amend(
        name, version, COMPILED_FOLDER, result.files, {"compiled": result.verdict}
    )
    return result.verdict


def describe_verdict(verdict: Mapping[str, Any] | None) -> str:
    """One line for `servekit models show`: passed/refused, mode, error, or why."""
    if not verdict:
        return "not compiled (the pickle serves)"
    error = verdict.get("max_error")
    measured = "not measured" if error is None else f"{error:.3g}"
    rows = verdict.get("rows") or {}
    counted = ", ".join(f"{count} {origin}" for origin, count in rows.items())
    python = verdict.get("python_steps") or []
    hybrid = f"; hybrid: {', '.join(python)} in Python" if python else ""
    if verdict["status"] == "passed":
        return (
            f"passed ({verdict['mode']}, max error {measured} <= "
            f"{verdict['tolerance']:g}, {verdict['runtime']}; rows: {counted}"
            f"{hybrid})"
        )
    step = verdict.get("failed_step")
    where = f" at step {step}" if step else ""
    return (
        f"refused{where} ({verdict['mode']}): {verdict.get('reason')}; "
        "the pickle serves"
    )


def _progress(console: Console | None) -> Any:
    if console is None:
        return None

    def say(line: str) -> None:
        console.print(f"[dim]compile:[/] {line}")

    return say
