"""Publishing: a version built in a hidden draft folder and renamed into place
complete, and a published version's derived subfolder replaced in place.

:class:`~modelregistry.registry.Registry` decides where (the model's folder, under
its lock) and regenerates the serving configs; these functions do the writing in
the order that keeps every reader safe: files first, the manifest last, then one
rename.
"""

from __future__ import annotations

import os
import platform
import secrets
import shutil
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from modelregistry.errors import ManifestError, VersionExists
from modelregistry.fsync import fsync_dir, fsync_tree, locked, write_atomically
from modelregistry.layout import scan_versions
from modelregistry.manifest import (
    MANIFEST_FILE,
    Manifest,
    digest_files,
    read_manifest,
    record_nullability,
)
from modelregistry.state import read_state, write_state

PUBLISH_PREFIX = ".publish-"
"""Name prefix of draft folders: `.publish-<pid>-<random>`."""


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries a model depends on, without importing them."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for distribution in ("numpy", "scikit-learn", "tensorflow", "pandas", "joblib"):
        try:
            versions[distribution] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[distribution] = None
    return versions


class Draft:
    """A version being built in a hidden folder; it becomes visible only when complete.

    Write files into `path` and set manifest fields in `manifest` (a dict of `Manifest`
    fields). On a clean exit of the `publish` block the registry digests the files,
    writes `servekit.json` last, fsyncs and renames the folder into place; `version`
    then holds the number it got.
    """

    def __init__(self, name: str, framework: str, path: Path) -> None:
        self.name = name
        self.framework = framework
        self.path = path
        self.manifest: dict[str, Any] = {}
        self.version: int | None = None


def new_draft(model_dir: Path, name: str, framework: str) -> Draft:
    """An empty draft folder in `model_dir`, named for this process."""
    draft_dir = model_dir / f"{PUBLISH_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
    draft_dir.mkdir()
    return Draft(name, framework, draft_dir)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_abandoned_drafts(model_dir: Path) -> None:
    """Delete the draft folders of publishers that are no longer running."""
    # A publisher killed midway leaves its hidden folder behind; the pid in the
    # name tells whether its owner is gone.
    for entry in model_dir.glob(f"{PUBLISH_PREFIX}*"):
        pid_text = entry.name[len(PUBLISH_PREFIX) :].split("-", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            shutil.rmtree(entry, ignore_errors=True)


def complete_draft(draft: Draft, model_dir: Path, version: int | None) -> None:
    """Write the draft's manifest and rename it into place as `version` (the next
    free number when None); `draft.version` then holds the number.

    Raises:
        ManifestError: the manifest fields do not fit the schema, or the artifact
            was not written.
        VersionExists: `version` was published meanwhile.
    """
    fields: dict[str, Any] = {
        "name": draft.name,
        "framework": draft.framework,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "libraries": library_versions(),
        **draft.manifest,
    }
    fields["files"] = digest_files(draft.path)
    try:
        manifest = record_nullability(Manifest.model_validate(fields))
    except ValueError as exc:
        raise ManifestError(f"cannot publish {draft.name}: {exc}") from exc
    if manifest.artifact not in manifest.files:
        raise ManifestError(
            f"cannot publish {draft.name}: artifact {manifest.artifact!r} was not written"
        )
    # The manifest goes in last: a folder with a manifest is a complete one.
    (draft.path / MANIFEST_FILE).write_text(
        manifest.model_dump_json(indent=2) + "\n", encoding="utf-8"
    )
    fsync_tree(draft.path)
    with locked(model_dir / ".lock"):
        state = read_state(model_dir)
        existing = scan_versions(model_dir)
        if version is None:
            version = max([state.last_version, *existing]) + 1
        elif version in existing:
            raise VersionExists(f"model {draft.name!r} already has version {version}")
        os.rename(draft.path, model_dir / str(version))
        fsync_dir(model_dir)
        state.last_version = max(state.last_version, version)
        write_state(model_dir, state)
    draft.version = version


def amend_version(
    version_dir: Path,
    folder: str,
    files: dict[str, bytes],
    fields: dict[str, Any],
    what: str,
) -> Manifest:
    """Replace `folder` of a published version with `files` (paths under it), then
    its manifest with the new digests and `fields`; the caller holds the model's
    lock. `what` names the version in errors.

    Raises:
        ManifestError: the version has no valid manifest, or the fields do not
            fit the schema.
    """
    prefix = folder.strip("/") + "/"
    manifest = read_manifest(version_dir)
    staging = version_dir / f".{folder}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        for path, content in files.items():
            target = staging / path[len(prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        fsync_tree(staging)
        final = version_dir / folder
        if final.exists():
            doomed = version_dir / f".{folder}-old-{secrets.token_hex(4)}"
            os.rename(final, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        if files:
            os.rename(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    fields = {**manifest.model_dump(), **fields}
    fields["files"] = digest_files(version_dir)
    try:
        amended = Manifest.model_validate(fields)
    except ValueError as exc:
        raise ManifestError(f"cannot amend {what}: {exc}") from exc
    write_atomically(
        version_dir / MANIFEST_FILE, amended.model_dump_json(indent=2) + "\n"
    )
    fsync_dir(version_dir)
    return amended
