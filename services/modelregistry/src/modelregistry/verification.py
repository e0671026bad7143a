"""The rules a version folder must keep to be loaded; `servekit models verify` and every
loader apply this one list."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from modelregistry.codemodules import listed_modules
from modelregistry.manifest import Manifest, verify_files

SKOPS_SUFFIX = ".skops"


def manifest_problems(manifest: Manifest) -> list[str]:
    """What is wrong with a manifest's code and format fields, without reading files."""
    problems: list[str] = []
    if manifest.code_dir is not None:
        code_dir = PurePosixPath(manifest.code_dir)
        if code_dir.is_absolute() or ".." in code_dir.parts or not code_dir.parts:
            problems.append(
                f"code_dir {manifest.code_dir!r}: not a folder inside the version"
            )
    modules = listed_modules(manifest) if not problems else {}
    for name, module in sorted(manifest.main_names.items()):
        if not name.isidentifier():
            problems.append(f"main_names: {name!r} is not a Python name")
        if module not in modules:
            problems.append(
                f"main_names: __main__.{name} maps to {module}, which is not a "
                "module of the version's code folder"
            )
    if manifest.artifact.endswith(SKOPS_SUFFIX):
        if manifest.trusted_types is None:
            problems.append(
                f"{manifest.artifact}: a .skops artifact needs trusted_types"
            )
        if manifest.main_names:
            problems.append(
                f"{manifest.artifact}: a .skops file has no __main__ names to map"
            )
    elif manifest.trusted_types is not None:
        problems.append("trusted_types is only meaningful for a .skops artifact")
    return problems


def version_problems(version_dir: Path, manifest: Manifest) -> list[str]:
    """Every reason a version must not be loaded (empty when it may).

    Every file must be listed with its sha256 and match it, nothing unlisted may sit in
    the folder (a stray `code/__init__.py` would otherwise be imported), and the
    manifest's code fields must point at what the version ships.
    """
    return [*verify_files(version_dir, manifest), *manifest_problems(manifest)]
