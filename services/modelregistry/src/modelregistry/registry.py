"""The registry: what is published, labels and rollouts, atomic publishing, config files."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modelregistry.errors import (
    InvalidName,
    LabelInUse,
    ManifestError,
    ModelNotFound,
    RegistryNotWritable,
    VersionExists,
    VersionNotFound,
)
from modelregistry.fsync import fsync_dir, locked, write_atomically
from modelregistry.layout import (
    SERVEKIT_CONFIG_FILE,
    SKLEARN_CONFIG_FILE,
    TF_CONFIG_FILE,
    check_label,
    check_model_name,
    scan_models,
    scan_versions,
)
from modelregistry.manifest import MANIFEST_FILE, Manifest, read_manifest
from modelregistry.publishing import (
    Draft,
    amend_version,
    complete_draft,
    library_versions,
    new_draft,
    remove_abandoned_drafts,
)
from modelregistry.servingconfig import ModelEntry, config_text, serving_policy
from modelregistry.state import ModelState, read_state, write_state
from modelregistry.verification import version_problems

__all__ = ["CANARY", "STABLE", "Draft", "Registry", "library_versions"]

STABLE = "stable"
CANARY = "canary"
DEFAULT_TF_BASE_PATH = "/models"


class Registry:
    """A registry folder in TF Serving's layout, with servekit's manifests and labels."""

    def __init__(self, root: Path, tf_base_path: str = DEFAULT_TF_BASE_PATH) -> None:
        self.root = Path(root)
        self.tf_base_path = tf_base_path.rstrip("/")
        """Where TF Serving sees the registry (`models.config` base paths)."""

    # ---- queries -------------------------------------------------------------------

    def models(self) -> list[str]:
        """Names of the models that have at least one folder entry."""
        return scan_models(self.root)

    def _model_dir(self, name: str) -> Path:
        check_model_name(name)
        model_dir = self.root / name
        if not model_dir.is_dir():
            raise ModelNotFound(f"model {name!r} not found in {self.root}")
        return model_dir

    def versions(self, name: str) -> list[int]:
        """Published versions of a model, ascending.

        Raises:
            ModelNotFound: no such model folder.
        """
        return sorted(scan_versions(self._model_dir(name)))

    def version_dir(self, name: str, version: int) -> Path:
        """The folder of one version (zero-padded names resolve too).

        Raises:
            ModelNotFound: no such model.
            VersionNotFound: no such version.
        """
        found = scan_versions(self._model_dir(name)).get(version)
        if found is None:
            raise VersionNotFound(f"model {name!r} has no version {version}")
        return found

    def manifest(self, name: str, version: int) -> Manifest:
        """The manifest of a version.

        Raises:
            ModelNotFound, VersionNotFound: unknown model or version.
            ManifestError: the version has no valid `servekit.json`.
        """
        return read_manifest(self.version_dir(name, version))

    def framework(self, name: str, version: int) -> str:
        """`sklearn` or `tensorflow`; a SavedModel copied in without a manifest is TF."""
        version_dir = self.version_dir(name, version)
        if (version_dir / MANIFEST_FILE).exists():
            return read_manifest(version_dir).framework
        if (version_dir / "saved_model.pb").exists() or (
            version_dir / "saved_model.pbtxt"
        ).exists():
            return "tensorflow"
        raise ManifestError(f"{version_dir}: no manifest and no SavedModel")

    def state(self, name: str) -> ModelState:
        """Labels, label history and version policy of a model."""
        return read_state(self._model_dir(name))

    def labels(self, name: str) -> dict[str, int]:
        """Label → version for a model."""
        return dict(self.state(name).labels)

    def resolve(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> int:
        """The version a request means: explicit, by label, else `stable`, else latest.

        Raises:
            ModelNotFound, VersionNotFound: nothing matches.
        """
        if version is not None:
            self.version_dir(name, version)
            return version
        labels = self.labels(name)
        if label is not None:
            if label not in labels:
                raise VersionNotFound(f"model {name!r} has no label {label!r}")
            return labels[label]
        if STABLE in labels:
            return labels[STABLE]
        versions = self.versions(name)
        if not versions:
            raise VersionNotFound(f"model {name!r} has no published version")
        return versions[-1]

    def verify(self, name: str, version: int) -> list[str]:
        """Every problem with a version's files and manifest (empty when sound).

        The same rules every loader applies before it opens a file.
        """
        try:
            manifest = self.manifest(name, version)
        except ManifestError as exc:
            return [str(exc)]
        problems = version_problems(self.version_dir(name, version), manifest)
        if manifest.name != name:
            problems.append(
                f"manifest names model {manifest.name!r}, folder is {name!r}"
            )
        return problems

    # ---- publishing ----------------------------------------------------------------

    def _prepare_model_dir(self, name: str) -> Path:
        check_model_name(name)
        model_dir = self.root / name
        try:
            model_dir.mkdir(parents=True, exist_ok=True)
            probe = model_dir / f".write-probe-{secrets.token_hex(4)}"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            raise RegistryNotWritable(
                f"registry {self.root} is not writable: {exc.strerror}"
            ) from exc
        remove_abandoned_drafts(model_dir)
        return model_dir

    @contextlib.contextmanager
    def publish(
        self, name: str, framework: str, version: int | None = None
    ) -> Iterator[Draft]:
        """Build a new version in a hidden folder and publish it atomically on exit.

        Raises:
            InvalidName: bad model name or version.
            VersionExists: `version` is already published.
            RegistryNotWritable: the registry folder cannot be written.
            ManifestError: the manifest fields do not fit the schema.
        """
        if version is not None and version <= 0:
            raise InvalidName(
                f"invalid version {version}: versions are positive integers"
            )
        model_dir = self._prepare_model_dir(name)
        if version is not None and version in scan_versions(model_dir):
            raise VersionExists(f"model {name!r} already has version {version}")
        draft = new_draft(model_dir, name, framework)
        try:
            yield draft
            complete_draft(draft, model_dir, version)
            self.write_configs()
        finally:
            if draft.path.exists():
                shutil.rmtree(draft.path, ignore_errors=True)

    def amend(
        self,
        name: str,
        version: int,
        folder: str,
        files: dict[str, bytes],
        fields: dict[str, Any],
    ) -> Manifest:
        """Replace one subfolder of a published version and update its manifest.

        For what is derived from a version after publishing (its compiled model):
        the new files go in under a hidden name and are renamed into place, then the
        manifest, with the new digests and ``fields``, replaces the old one in one
        rename. A loader holding the old manifest finds files that do not match it
        and refuses them rather than using them.

        Raises:
            ModelNotFound, VersionNotFound: unknown model or version.
            ManifestError: the fields do not fit the schema.
            InvalidName: a file lies outside ``folder``.
        """
        model_dir = self._model_dir(name)
        prefix = folder.strip("/") + "/"
        if any(not path.startswith(prefix) or ".." in path for path in files):
            raise InvalidName(f"amended files must lie in {prefix}")
        with locked(model_dir / ".lock"):
            version_dir = self.version_dir(name, version)
            return amend_version(
                version_dir, folder, files, fields, what=f"{name} {version}"
            )

    # ---- labels and rollouts ------------------------------------------------------

    def _update_state(self, name: str, change: Any) -> ModelState:
        model_dir = self._model_dir(name)
        with locked(model_dir / ".lock"):
            state = read_state(model_dir)
            change(state, scan_versions(model_dir))
            write_state(model_dir, state)
        self.write_configs()
        return state

    def set_label(self, name: str, label: str, version: int) -> None:
        """Point a label at a published version (the previous target goes to history).

        Raises:
            InvalidName: bad label.
            ModelNotFound, VersionNotFound: unknown model or version.
        """
        check_label(label)

        def change(state: ModelState, versions: dict[int, Path]) -> None:
            if version not in versions:
                raise VersionNotFound(f"model {name!r} has no version {version}")
            previous = state.labels.get(label)
            if previous is not None and previous != version:
                state.label_history.setdefault(label, []).append(previous)
            state.labels[label] = version

        self._update_state(name, change)

    def remove_label(self, name: str, label: str) -> None:
        """Drop a label.

        Raises:
            VersionNotFound: the model has no such label.
        """

        def change(state: ModelState, _versions: dict[int, Path]) -> None:
            if label not in state.labels:
                raise VersionNotFound(f"model {name!r} has no label {label!r}")
            del state.labels[label]

        self._update_state(name, change)

    def promote(self, name: str, version: int | None = None) -> int:
        """Make a version `stable`: the given one, else the `canary` (which is then cleared).

        Raises:
            VersionNotFound: no version given and no canary label, or unknown version.
        """
        promoted: list[int] = []

        def change(state: ModelState, versions: dict[int, Path]) -> None:
            target = version if version is not None else state.labels.get(CANARY)
            if target is None:
                raise VersionNotFound(
                    f"model {name!r} has no {CANARY!r} label; give a version to promote"
                )
            if target not in versions:
                raise VersionNotFound(f"model {name!r} has no version {target}")
            previous = state.labels.get(STABLE)
            if previous is not None and previous != target:
                state.label_history.setdefault(STABLE, []).append(previous)
            state.labels[STABLE] = target
            if state.labels.get(CANARY) == target:
                del state.labels[CANARY]
            promoted.append(target)

        self._update_state(name, change)
        return promoted[0]

    def rollback(self, name: str) -> int:
        """Point `stable` back at the version it had before the last promotion.

        Raises:
            VersionNotFound: there is no earlier stable version still published.
        """
        restored: list[int] = []

        def change(state: ModelState, versions: dict[int, Path]) -> None:
            history = state.label_history.get(STABLE, [])
            while history and history[-1] not in versions:
                history.pop()
            if not history:
                raise VersionNotFound(f"model {name!r} has no earlier stable version")
            state.labels[STABLE] = history.pop()
            restored.append(state.labels[STABLE])

        self._update_state(name, change)
        return restored[0]

    def delete(self, name: str, version: int) -> None:
        """Remove a version; refused while a label points at it.

        Raises:
            LabelInUse: a label names the version.
            ModelNotFound, VersionNotFound: unknown model or version.
        """
        model_dir = self._model_dir(name)
        with locked(model_dir / ".lock"):
            state = read_state(model_dir)
            version_dir = scan_versions(model_dir).get(version)
            if version_dir is None:
                raise VersionNotFound(f"model {name!r} has no version {version}")
            holding = sorted(label for label, v in state.labels.items() if v == version)
            if holding:
                raise LabelInUse(
                    f"version {version} of {name!r} is labelled {', '.join(holding)}; "
                    "move the label first"
                )
            # Renaming first makes the version vanish at once for every reader.
            doomed = model_dir / f".deleted-{version}-{secrets.token_hex(4)}"
            os.rename(version_dir, doomed)
            fsync_dir(model_dir)
        shutil.rmtree(doomed, ignore_errors=True)
        self.write_configs()

    def set_version_policy(
        self, name: str, policy: dict[str, dict[str, int | list[int]]] | None
    ) -> None:
        """Set (or with None, clear) a model's explicit TF Serving version policy."""
        if policy is not None and (
            len(policy) != 1 or next(iter(policy)) not in ("latest", "all", "specific")
        ):
            raise InvalidName("a version policy is one of latest, all, specific")

        def change(state: ModelState, _versions: dict[int, Path]) -> None:
            state.version_policy = policy

        self._update_state(name, change)

    # ---- serving configs ----------------------------------------------------------

    def serving_entries(self, framework: str | None = None) -> list[ModelEntry]:
        """One config entry per model with at least one version.

        With `framework` ("tensorflow" or "sklearn") only that framework's models are
        listed; TensorFlow entries then use TF Serving's container base paths.
        """
        entries: list[ModelEntry] = []
        for name in self.models():
            model_dir = self.root / name
            versions = sorted(scan_versions(model_dir))
            if not versions:
                continue
            try:
                platform_name = self.framework(name, versions[-1])
            except ManifestError:
                continue
            if framework is not None and platform_name != framework:
                continue
            state = read_state(model_dir)
            labels = {label: v for label, v in state.labels.items() if v in versions}
            policy = serving_policy(state, labels, versions)
            base_path = (
                f"{self.tf_base_path}/{name}" if framework == "tensorflow" else name
            )
            entries.append(ModelEntry(name, base_path, platform_name, policy, labels))
        return entries

    def write_configs(self) -> None:
        """Regenerate the serving configs.

        `models.config` lists TensorFlow models for TF Serving; `sklearn.config` the
        scikit-learn models, for a servekit-model-server beside TF Serving;
        `servekit.config` every model, for a servekit-model-server serving them all.
        """
        if not self.root.is_dir():
            return
        configs = {
            TF_CONFIG_FILE: "tensorflow",
            SKLEARN_CONFIG_FILE: "sklearn",
            SERVEKIT_CONFIG_FILE: None,
        }
        with locked(self.root / ".lock"):
            for filename, framework in configs.items():
                write_atomically(
                    self.root / filename, config_text(self.serving_entries(framework))
                )
