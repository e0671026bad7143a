from __future__ import annotations

import json
from pathlib import Path

import joblib
import pytest
from modelregistry import (
    MANIFEST_FILE,
    IntegrityError,
    InvalidName,
    LabelInUse,
    ManifestError,
    ModelNotFound,
    Registry,
    VersionExists,
    VersionNotFound,
    load_pickle,
    nullability_unrecorded,
    read_manifest,
    sha256_file,
)

from .conftest import publish_linear


def test_publish_writes_manifest_with_digests_and_libraries(registry: Registry) -> None:
    version = publish_linear(registry)
    assert version == 1
    version_dir = registry.version_dir("linear", 1)
    manifest = read_manifest(version_dir)
    assert manifest.framework == "sklearn"
    assert manifest.name == "linear"
    assert manifest.files["model.joblib"].sha256 == sha256_file(
        version_dir / "model.joblib"
    )
    assert set(manifest.files) == {"model.joblib"}
    assert manifest.libraries["scikit-learn"]
    assert manifest.libraries["python"].startswith("3.")
    assert manifest.created.endswith("Z")
    assert registry.verify("linear", 1) == []


def test_versions_increment_and_are_never_reused(registry: Registry) -> None:
    assert [publish_linear(registry) for _ in range(3)] == [1, 2, 3]
    registry.delete("linear", 3)
    assert registry.versions("linear") == [1, 2]
    assert publish_linear(registry) == 4


def test_explicit_version_and_conflict(registry: Registry) -> None:
    assert publish_linear(registry, version=7) == 7
    with pytest.raises(VersionExists):
        publish_linear(registry, version=7)
    assert publish_linear(registry) == 8


def test_failed_build_leaves_nothing_visible(registry: Registry) -> None:
    with (
        pytest.raises(RuntimeError),
        registry.publish("linear", framework="sklearn") as draft,
    ):
        (draft.path / "model.joblib").write_bytes(b"half")
        raise RuntimeError("training crashed")
    assert registry.versions("linear") == []
    assert [
        p.name
        for p in (registry.root / "linear").iterdir()
        if p.name.startswith(".publish")
    ] == []


def test_manifest_must_name_a_written_artifact(registry: Registry) -> None:
    with (
        pytest.raises(ManifestError, match="artifact"),
        registry.publish("linear", framework="sklearn") as draft,
    ):
        draft.manifest.update(artifact="model.joblib")
    with (
        pytest.raises(ManifestError),
        registry.publish("linear", framework="pytorch") as draft,
    ):
        (draft.path / "model.joblib").write_bytes(b"x")
        draft.manifest.update(artifact="model.joblib")
    assert registry.versions("linear") == []


def test_tampered_pickle_is_refused(registry: Registry) -> None:
    publish_linear(registry)
    version_dir = registry.version_dir("linear", 1)
    manifest = registry.manifest("linear", 1)
    assert load_pickle(version_dir, manifest).predict([[1.0, 1.0]]).shape == (1,)
    payload = (version_dir / "model.joblib").read_bytes()
    (version_dir / "model.joblib").write_bytes(payload + b"\0")
    with pytest.raises(IntegrityError, match="sha256"):
        load_pickle(version_dir, manifest)
    assert any("sha256 mismatch" in p for p in registry.verify("linear", 1))


def test_code_dir_is_importable_and_verified(
    registry: Registry, tmp_path: Path
) -> None:
    module = "servekit_test_scaler"
    source = (
        "class Doubler:\n"
        "    def predict(self, rows):\n"
        "        return [2 * sum(row) for row in rows]\n"
    )
    code_dir = tmp_path / "src"
    code_dir.mkdir()
    (code_dir / f"{module}.py").write_text(source)
    import sys

    sys.path.insert(0, str(code_dir))
    try:
        doubler = __import__(module).Doubler()
        with registry.publish("doubler", framework="sklearn") as draft:
            joblib.dump(doubler, draft.path / "model.joblib")
            (draft.path / "code").mkdir()
            (draft.path / "code" / f"{module}.py").write_text(source)
            draft.manifest.update(artifact="model.joblib", code_dir="code")
    finally:
        sys.path.remove(str(code_dir))
        sys.modules.pop(module, None)
    version_dir = registry.version_dir("doubler", 1)
    manifest = registry.manifest("doubler", 1)
    assert load_pickle(version_dir, manifest).predict([[1, 2]]) == [6]
    (version_dir / "code" / f"{module}.py").write_text(source + "# changed\n")
    with pytest.raises(IntegrityError):
        load_pickle(version_dir, manifest)


def test_labels_promote_rollback_and_delete_rules(registry: Registry) -> None:
    for _ in range(3):
        publish_linear(registry)
    assert registry.resolve("linear") == 3
    registry.set_label("linear", "stable", 1)
    assert registry.resolve("linear") == 1
    registry.set_label("linear", "canary", 2)
    assert registry.resolve("linear", label="canary") == 2
    with pytest.raises(LabelInUse, match="canary"):
        registry.delete("linear", 2)
    assert registry.promote("linear") == 2
    assert registry.labels("linear") == {"stable": 2}
    assert registry.rollback("linear") == 1
    assert registry.labels("linear") == {"stable": 1}
    with pytest.raises(VersionNotFound):
        registry.rollback("linear")
    with pytest.raises(VersionNotFound):
        registry.promote("linear")
    with pytest.raises(VersionNotFound):
        registry.set_label("linear", "canary", 99)
    with pytest.raises(InvalidName):
        registry.set_label("linear", "Bad Label", 1)
    registry.delete("linear", 2)
    assert registry.versions("linear") == [1, 3]
    with pytest.raises(ModelNotFound):
        registry.versions("nope")


def test_rollback_skips_deleted_versions(registry: Registry) -> None:
    for _ in range(3):
        publish_linear(registry)
    registry.promote("linear", 1)
    registry.promote("linear", 2)
    registry.promote("linear", 3)
    registry.delete("linear", 2)
    assert registry.rollback("linear") == 1


def test_hidden_and_non_integer_entries_are_ignored(registry: Registry) -> None:
    publish_linear(registry)
    model_dir = registry.root / "linear"
    (model_dir / ".publish-1-abc").mkdir()
    (model_dir / "tmp").mkdir()
    (model_dir / "0").mkdir()
    (model_dir / "00000005").mkdir()
    assert registry.versions("linear") == [1, 5]
    assert registry.version_dir("linear", 5).name == "00000005"
    (registry.root / ".hidden").mkdir()
    assert registry.models() == ["linear"]


def test_invalid_manifest_is_reported(registry: Registry) -> None:
    publish_linear(registry)
    path = registry.version_dir("linear", 1) / MANIFEST_FILE
    data = json.loads(path.read_text())
    data["framework"] = "pytorch"
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="framework"):
        registry.manifest("linear", 1)
    assert registry.verify("linear", 1)


def test_bad_names_are_refused(registry: Registry) -> None:
    with pytest.raises(InvalidName), registry.publish("../escape", framework="sklearn"):
        pass
    with (
        pytest.raises(InvalidName),
        registry.publish("ok", framework="sklearn", version=0),
    ):
        pass


def test_publishing_records_nullability_and_old_manifests_stay_as_written(
    registry: Registry,
) -> None:
    publish_linear(registry)
    path = registry.version_dir("linear", 1) / MANIFEST_FILE
    written = json.loads(path.read_text())
    # A publisher that does not say gets an explicit false, never an absent key.
    assert [f["nullable"] for f in written["features"]] == [False, False]
    assert nullability_unrecorded(read_manifest(path.parent)) == []

    # A manifest as servekit wrote it before the field: no key, read as None,
    # and written back without one when the version is amended.
    for feature in written["features"]:
        del feature["nullable"]
    path.write_text(json.dumps(written, indent=2) + "\n")
    old = read_manifest(path.parent)
    assert [f.nullable for f in old.features] == [None, None]
    assert nullability_unrecorded(old) == ["a", "b"]
    registry.amend("linear", 1, "extra", {"extra/note.txt": b"x"}, {})
    amended = json.loads(path.read_text())
    assert all("nullable" not in f for f in amended["features"])
    assert registry.verify("linear", 1) == []
