"""Loading pickled models safely: pickles are code, so digests are checked first."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from modelregistry.errors import IntegrityError, ManifestError
from modelregistry.manifest import Manifest, sha256_file


def _check_digest(version_dir: Path, relative: str, manifest: Manifest) -> None:
    expected = manifest.files.get(relative)
    if expected is None:
        raise IntegrityError(
            f"{relative}: not listed in the manifest; refusing to load"
        )
    path = version_dir / relative
    if not path.is_file():
        raise IntegrityError(f"{relative}: missing from {version_dir}")
    actual = sha256_file(path)
    if actual != expected.sha256:
        raise IntegrityError(
            f"{relative}: sha256 {actual[:12]}… does not match the manifest's "
            f"{expected.sha256[:12]}…; refusing to unpickle"
        )


def load_pickle(version_dir: Path, manifest: Manifest) -> Any:
    """Verify the artifact and the model's own code against the manifest, then unpickle.

    The manifest's `code_dir` goes on `sys.path` while loading, and modules of the same
    name loaded earlier (from another version) are dropped first, so each version gets
    the classes it was published with.

    Raises:
        IntegrityError: a file is missing or its sha256 differs from the manifest.
        ManifestError: the manifest names no loadable artifact.
    """
    if manifest.framework != "sklearn":
        raise ManifestError(
            f"{version_dir}: framework {manifest.framework} is no pickle"
        )
    _check_digest(version_dir, manifest.artifact, manifest)
    code_modules: list[str] = []
    code_path: str | None = None
    if manifest.code_dir:
        prefix = manifest.code_dir.rstrip("/") + "/"
        for relative in manifest.files:
            if relative.startswith(prefix):
                _check_digest(version_dir, relative, manifest)
                if relative.endswith(".py") and relative.count("/") == 1:
                    code_modules.append(relative[len(prefix) : -3])
        code_path = str(version_dir / manifest.code_dir)
    for module_name in code_modules:
        sys.modules.pop(module_name, None)
    if code_path is not None:
        sys.path.insert(0, code_path)
    # joblib pulls in numpy; only callers that unpickle pay for it.
    import joblib

    try:
        return joblib.load(version_dir / manifest.artifact)
    finally:
        if code_path is not None and code_path in sys.path:
            sys.path.remove(code_path)
